"""OpenVINO conversion of the ``ai.veloxseg::PairedWindowAttention`` node to native ops.

OpenVINO does not inline model-local functions of custom domains, so the ONNX frontend gets a
``ConversionExtension`` that rebuilds the op from its attributes: per scale, max-pool and window
partition by Reshape/Transpose, one fused ScaledDotProductAttention over all windows (the bias as
an additive ``[heads, L, L]`` mask), and per-window trilinear upsampling (align_corners).
"""

from __future__ import annotations

import numpy as np

from veloxseg.runtime.card import PWA_DOMAIN, PWA_OP_TYPE

__all__ = ["pwa_conversion_extension"]


def _const(values: list[int]):  # type: ignore[no-untyped-def]
    import openvino.opset13 as ops

    return ops.constant(np.asarray(values, dtype=np.int64))


class _Geometry:
    """Window counts and sizes of one node, from its attributes."""

    def __init__(self, ctx) -> None:  # type: ignore[no-untyped-def]
        self.modalities = int(ctx.get_attribute("modalities"))
        self.heads = int(ctx.get_attribute("heads"))
        big = list(ctx.get_attribute("big_windows"))
        small = list(ctx.get_attribute("small_windows"))
        self.size = tuple(int(s) for s in ctx.get_attribute("spatial_size"))
        self.big = [tuple(big[i : i + 3]) for i in range(0, len(big), 3)]
        self.small = [tuple(small[i : i + 3]) for i in range(0, len(small), 3)]
        self.n = tuple(b // s for b, s in zip(self.big[0], self.small[0], strict=True))
        self.tokens = self.n[0] * self.n[1] * self.n[2]

    def counts(self, scale: int) -> tuple[int, int, int]:
        return tuple(self.size[k] // self.big[scale][k] for k in range(3))  # type: ignore[return-value]


def _channel_groups(x, channels: int, groups: int):  # type: ignore[no-untyped-def]
    """Split channels into equal groups with 1x1 selection convolutions (exact: weights 0/1).

    A channel Split runs as a slow reference kernel when the groups are not multiples of the
    CPU plugin's channel block (16); a 1x1 convolution stays in the blocked JIT kernels.
    """
    import openvino.opset13 as ops

    if groups == 1:
        return [x]
    size = channels // groups
    parts = []
    for g in range(groups):
        weights = np.zeros((size, channels, 1, 1, 1), dtype=np.float32)
        weights[np.arange(size), g * size + np.arange(size), 0, 0, 0] = 1.0
        parts.append(
            ops.convolution(x, ops.constant(weights), [1, 1, 1], [0, 0, 0], [0, 0, 0], [1, 1, 1])
        )
    return parts


def _gather(x, geo: _Geometry, channels: int):  # type: ignore[no-untyped-def]
    """``(B, S*h*c, D, H, W) -> (B, windows, h, L, c)``."""
    import openvino.opset13 as ops

    scales = len(geo.big)
    c = channels // (scales * geo.heads)
    parts = _channel_groups(x, channels, scales)
    windows = []
    for i, part in enumerate(parts):
        if geo.small[i] != (1, 1, 1):
            window = list(geo.small[i])
            part = ops.max_pool(part, window, [1, 1, 1], [0, 0, 0], [0, 0, 0], window).output(0)
        nd, nh, nw = geo.counts(i)
        n0, n1, n2 = geo.n
        part = ops.reshape(part, _const([0, geo.heads, c, nd, n0, nh, n1, nw, n2]), True)
        part = ops.transpose(part, _const([0, 3, 5, 7, 1, 4, 6, 8, 2]))
        windows.append(ops.reshape(part, _const([0, nd * nh * nw, geo.heads, geo.tokens, c]), True))
    return windows[0] if len(windows) == 1 else ops.concat(windows, 1)


def _scatter(attn, geo: _Geometry, c: int):  # type: ignore[no-untyped-def]
    """``(B, windows, h, L, c) -> (B, S*h*c, D, H, W)`` with per-window upsampling."""
    import openvino.opset13 as ops

    counts = [int(np.prod(geo.counts(i))) for i in range(len(geo.big))]
    parts = (
        ops.variadic_split(attn, ops.constant(np.int64(1)), _const(counts)).outputs()
        if len(counts) > 1
        else [attn]
    )
    n0, n1, n2 = geo.n
    outs = []
    for i, part in enumerate(parts):
        nd, nh, nw = geo.counts(i)
        part = ops.reshape(part, _const([0, nd, nh, nw, geo.heads, n0, n1, n2, c]), True)
        b0, b1, b2 = geo.big[i]
        if geo.small[i] != (1, 1, 1):
            part = ops.transpose(part, _const([0, 1, 2, 3, 4, 8, 5, 6, 7]))
            part = ops.reshape(part, _const([-1, geo.heads * c, n0, n1, n2]), False)
            part = _upsample(part, geo.big[i])
            part = ops.reshape(part, _const([-1, nd, nh, nw, geo.heads, c, b0, b1, b2]), False)
            part = ops.transpose(part, _const([0, 4, 5, 1, 6, 2, 7, 3, 8]))
        else:
            part = ops.transpose(part, _const([0, 4, 8, 1, 5, 2, 6, 3, 7]))
        outs.append(ops.reshape(part, _const([0, geo.heads * c, *geo.size]), True))
    return outs[0] if len(outs) == 1 else ops.concat(outs, 1)


def _upsample(x, size: tuple[int, int, int]):  # type: ignore[no-untyped-def]
    import openvino.opset11 as ops11

    return ops11.interpolate(
        x,
        _const(list(size)),
        mode="linear_onnx",
        shape_calculation_mode="sizes",
        coordinate_transformation_mode="align_corners",
        axes=_const([2, 3, 4]),
    )


def _convert(ctx):  # type: ignore[no-untyped-def]
    import openvino.opset13 as ops

    geo = _Geometry(ctx)
    m = geo.modalities
    inputs = [ctx.get_input(i) for i in range(3 * m + 1)]
    c_qk = inputs[0].get_partial_shape()[1].get_length()
    c_v = inputs[2].get_partial_shape()[1].get_length()
    q = ops.concat([_gather(inputs[3 * i], geo, c_qk) for i in range(m)], 3)
    k = ops.concat([_gather(inputs[3 * i + 1], geo, c_qk) for i in range(m)], 3)
    v = ops.concat([_gather(inputs[3 * i + 2], geo, c_v) for i in range(m)], 3)
    windows = sum(int(np.prod(geo.counts(i))) for i in range(len(geo.big)))
    c = c_v // (len(geo.big) * geo.heads)
    flat = [
        ops.reshape(t, _const([-1, geo.heads, m * geo.tokens, w]), False)
        for t, w in (
            (q, c_qk // (len(geo.big) * geo.heads)),
            (k, c_qk // (len(geo.big) * geo.heads)),
            (v, c),
        )
    ]
    attn = ops.scaled_dot_product_attention(*flat, inputs[-1], causal=False)
    attn = ops.reshape(attn, _const([-1, windows, geo.heads, m * geo.tokens, c]), False)
    per_modality = ops.split(attn, ops.constant(np.int64(3)), m).outputs() if m > 1 else [attn]
    return [_scatter(a, geo, c).output(0) for a in per_modality]


def pwa_conversion_extension():  # type: ignore[no-untyped-def]
    """The ONNX-frontend extension to add to an ``openvino.Core`` before ``read_model``."""
    from openvino.frontend.onnx import ConversionExtension

    return ConversionExtension(PWA_OP_TYPE, PWA_DOMAIN, _convert)
