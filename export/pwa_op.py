"""The ``ai.veloxseg::PairedWindowAttention`` custom op: window gather + attention + scatter.

One file holds the op's pieces:

* :class:`PairedWindowAttentionFunction`, which runs the PyTorch core eagerly and, under
  ``torch.onnx.export``, leaves one custom node per PWA block;
* :func:`function_body`, the model-local ONNX function (standard ops only) that stock ONNX
  Runtime inlines, one overload per distinct window scheme;
* :func:`reference_pwa`, a NumPy reference used by the tests.

Node inputs: ``q_0, k_0, v_0, ..., q_{M-1}, k_{M-1}, v_{M-1}, bias`` with q/k/v
``(B, C, D, H, W)`` and ``bias`` ``(heads, M*L, M*L)`` (the relative-position bias, precomputed and
tiled over modality pairs). Outputs: one ``(B, C_v, D, H, W)`` per modality, before mixing.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import torch
from onnx import helper
from torch import nn

from veloxseg.model.pwa import WindowScheme, window_attention_core
from veloxseg.runtime.card import PWA_DOMAIN, PWA_OP_TYPE

__all__ = [
    "PairedWindowAttentionFunction",
    "attach_functions",
    "custom_nodes",
    "function_body",
    "node_attributes",
    "reference_pwa",
    "scheme_key",
]


def scheme_key(scheme: WindowScheme, modalities: int, size: tuple[int, int, int]) -> str:
    """A short name that identifies one function overload, e.g. ``m2_h1_s4_n3x3x3_24x24x24``."""
    n = "x".join(map(str, scheme.tokens_per_axis))
    sz = "x".join(map(str, size))
    return f"m{modalities}_h{scheme.heads}_s{scheme.scales}_n{n}_{sz}"


def node_attributes(
    scheme: WindowScheme, modalities: int, size: tuple[int, int, int]
) -> dict[str, int | list[int] | str]:
    """The attributes every node carries; the OpenVINO extension rebuilds the op from them."""
    return {
        "modalities": modalities,
        "heads": scheme.heads,
        "big_windows": [v for b in scheme.big for v in b],
        "small_windows": [v for s in scheme.small for v in s],
        "spatial_size": list(size),
        "scheme": scheme_key(scheme, modalities, size),
    }


def _run_core(scheme: WindowScheme, tensors: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The PyTorch core on the node's input order ``q_0, k_0, v_0, ..., bias``."""
    qkv, bias = tensors[:-1], tensors[-1]
    qs, ks, vs = list(qkv[0::3]), list(qkv[1::3]), list(qkv[2::3])
    return tuple(window_attention_core(qs, ks, vs, bias, scheme))


class PairedWindowAttentionFunction(torch.autograd.Function):
    """Eager: the PyTorch core. Export: one ``ai.veloxseg::PairedWindowAttention`` node."""

    @staticmethod
    def forward(ctx, scheme: WindowScheme, modalities: int, size: tuple[int, int, int], *tensors):  # type: ignore[override]
        return _run_core(scheme, tensors)

    @staticmethod
    def symbolic(g, scheme: WindowScheme, modalities: int, size: tuple[int, int, int], *inputs):  # type: ignore[no-untyped-def]
        attrs = node_attributes(scheme, modalities, size)
        kwargs = {
            "modalities_i": attrs["modalities"],
            "heads_i": attrs["heads"],
            "big_windows_i": attrs["big_windows"],
            "small_windows_i": attrs["small_windows"],
            "spatial_size_i": attrs["spatial_size"],
            "scheme_s": attrs["scheme"],
        }
        outs = g.op(f"{PWA_DOMAIN}::{PWA_OP_TYPE}", *inputs, outputs=modalities, **kwargs)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        for out, v in zip(outs, inputs[2::3], strict=True):
            out.setType(v.type())
        return tuple(outs)


class _CoreModule(nn.Module):
    """The core alone, exported once per scheme to obtain the function body."""

    def __init__(self, scheme: WindowScheme, modalities: int) -> None:
        super().__init__()
        self.scheme, self.modalities = scheme, modalities

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return _run_core(self.scheme, tensors)


def input_names(modalities: int) -> list[str]:
    names = [f"{t}_{m}" for m in range(modalities) for t in ("q", "k", "v")]
    return [*names, "bias"]


def function_body(
    scheme: WindowScheme, modalities: int, size: tuple[int, int, int], opset: int
) -> onnx.FunctionProto:
    """The standard-op ONNX function for one scheme (overload = :func:`scheme_key`)."""
    heads = scheme.heads
    tokens = scheme.tokens * modalities
    examples = []
    for _ in range(modalities):
        examples += [
            torch.zeros(1, scheme.channels_qk, *size),
            torch.zeros(1, scheme.channels_qk, *size),
            torch.zeros(1, scheme.channels_v, *size),
        ]
    examples.append(torch.zeros(heads, tokens, tokens))
    names = input_names(modalities)
    outputs = [f"out_{m}" for m in range(modalities)]
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _CoreModule(scheme, modalities),
            tuple(examples),
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=names,
            output_names=outputs,
            dynamic_axes={n: {0: "batch"} for n in names[:-1] + outputs},
        )
    graph = onnx.load_from_string(buffer.getvalue()).graph
    constants = [
        helper.make_node("Constant", [], [init.name], value=init) for init in graph.initializer
    ]
    attrs = node_attributes(scheme, modalities, size)
    return helper.make_function(
        PWA_DOMAIN,
        PWA_OP_TYPE,
        names,
        outputs,
        constants + list(graph.node),
        [helper.make_opsetid("", opset)],
        attributes=list(attrs),
        overload=str(attrs["scheme"]),
    )


def _upsample_matrix(n: int, out: int) -> np.ndarray:
    """``(out, n)`` linear interpolation weights with align_corners=True."""
    if n == out:
        return np.eye(n, dtype=np.float64)
    pos = np.arange(out) * (n - 1) / (out - 1)
    lo = np.minimum(np.floor(pos).astype(int), n - 2)
    frac = pos - lo
    mat = np.zeros((out, n))
    mat[np.arange(out), lo] = 1 - frac
    mat[np.arange(out), lo + 1] += frac
    return mat


def reference_pwa(
    qs: list[np.ndarray],
    ks: list[np.ndarray],
    vs: list[np.ndarray],
    bias: np.ndarray,
    scheme: WindowScheme,
) -> list[np.ndarray]:
    """NumPy (float64) reference of the op, written from the definition, window by window."""
    m, heads, n = len(qs), scheme.heads, scheme.tokens_per_axis
    b, _, *size = qs[0].shape

    def windows(x: np.ndarray, scale: int) -> tuple[np.ndarray, tuple[int, int, int]]:
        big, small = scheme.big[scale], scheme.small[scale]
        c = x.shape[1] // (scheme.scales * heads)
        x = x.reshape(b, scheme.scales, heads, c, *size)[:, scale]
        counts = tuple(size[k] // big[k] for k in range(3))
        x = x.reshape(b, heads, c, counts[0], n[0], small[0], counts[1], n[1], small[1],
                      counts[2], n[2], small[2])  # fmt: skip
        x = x.max(axis=(5, 8, 11))  # max-pool each small window
        x = x.transpose(0, 1, 3, 5, 7, 4, 6, 8, 2)  # b h Nd Nh Nw nd nh nw c
        return x.reshape(b, heads, -1, scheme.tokens, c), counts

    outs = [[] for _ in range(m)]
    for scale in range(scheme.scales):
        q = np.concatenate([windows(t.astype(np.float64), scale)[0] for t in qs], axis=3)
        k = np.concatenate([windows(t.astype(np.float64), scale)[0] for t in ks], axis=3)
        v_parts = [windows(t.astype(np.float64), scale) for t in vs]
        v = np.concatenate([p[0] for p in v_parts], axis=3)
        counts = v_parts[0][1]
        scores = q @ k.swapaxes(-1, -2) / np.sqrt(q.shape[-1]) + bias[None, :, None]
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        attn = (scores / scores.sum(-1, keepdims=True)) @ v  # b h N (m L) c
        big = scheme.big[scale]
        mats = [_upsample_matrix(n[k], big[k]) for k in range(3)]
        for i in range(m):
            a = attn[:, :, :, i * scheme.tokens : (i + 1) * scheme.tokens]
            c = a.shape[-1]
            a = a.reshape(b, heads, *counts, *n, c)
            a = np.einsum("bhxyzijkc,ui,vj,wk->bhcxuyvzw", a, *mats)
            outs[i].append(a.reshape(b, heads * c, *size))
    return [np.concatenate(o, axis=1).astype(np.float32) for o in outs]


def custom_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The ``ai.veloxseg`` nodes of a model's main graph."""
    return [n for n in model.graph.node if n.domain == PWA_DOMAIN]


def attach_functions(
    model: onnx.ModelProto,
    schemes: dict[str, tuple[WindowScheme, int, tuple[int, int, int]]],
    opset: int,
) -> None:
    """Give each custom node its overload and add one function body per scheme to ``model``.

    ``schemes`` maps :func:`scheme_key` to ``(scheme, modalities, spatial_size)``.
    """
    for node in custom_nodes(model):
        key = next(a.s.decode() for a in node.attribute if a.name == "scheme")
        node.overload = key
    for scheme, modalities, size in schemes.values():
        model.functions.append(function_body(scheme, modalities, size, opset))
