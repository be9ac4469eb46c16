"""PyTorch VeloxSeg to ONNX, with PWA as ``ai.veloxseg`` custom nodes and a model card inside.

The exported graph has a dynamic batch axis and spatial axes fixed to the patch. Each PWA block
becomes one ``ai.veloxseg::PairedWindowAttention`` node whose model-local function body (standard
ops) lets stock ONNX Runtime run the file; the OpenVINO runtime maps the node to native ops.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import hashlib
import io
import json
import types
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import torch

from veloxseg import __version__
from veloxseg.export.card_defaults import GUESSES, default_card_fields, guessed_card_fields
from veloxseg.export.inference_graph import (
    export_forward,
    merged_embed,
    output_names,
    patch_merging_forward,
)
from veloxseg.export.pwa_op import (
    PairedWindowAttentionFunction,
    attach_functions,
    custom_nodes,
    scheme_key,
)
from veloxseg.model import VeloxSeg, load_checkpoint, resolve_config, seeded_state_dict
from veloxseg.model.layers import PatchMerging
from veloxseg.model.pwa import PairedWindowAttention
from veloxseg.runtime.card import (
    CARD_KEY,
    NORMALIZATION_FILE,
    PWA_DOMAIN,
    PWA_OPSET,
    ModelCard,
    Normalization,
)
from veloxseg.runtime.errors import VeloxSegError
from veloxseg.runtime.output_files import atomic_writer, replaced_input

__all__ = [
    "DEFAULT_OPSET",
    "SUPPORTED_OPSETS",
    "ExportError",
    "ExportResult",
    "build_card",
    "export_onnx",
    "load_card_file",
]

DEFAULT_OPSET = 17
SUPPORTED_OPSETS = range(11, 21)
"""Below 11 torch cannot export the network (3D upsampling, chunks); 20 is the highest that every
supported torch (>= 2.4) exports. Each one exports and verifies in ONNX Runtime and OpenVINO."""
IR_VERSION = 10  # function overloads need IR 10
"""What ``veloxseg train`` writes beside its checkpoints: card fields measured on its data."""
# What preprocessing rests on: recorded by training.
_PREPROCESSING_FIELDS = ("modalities", "normalization", "spacing")


class ExportError(VeloxSegError, ValueError):
    """An export request the user must fix: opset, output path, or card sources."""


@dataclass(frozen=True)
class ExportResult:
    """What an export produced; ``max_abs_diff`` maps backend name to max |Δlogit| vs PyTorch."""

    path: Path
    card: ModelCard
    custom_nodes: int
    max_abs_diff: dict[str, float]
    normalization_file: Path | None
    """The training run's ``normalization.json`` that the card's normalisation came from."""
    placeholder_statistics: bool
    """The card's CT statistics are the config's placeholders, not measured on training data."""
    generic_card_fields: tuple[str, ...] = ()
    """Card fields left at generic guesses (``channel0``, z-score, 1 mm, labels ``0..K-1``): the
    config has no named defaults, or none that fit it, and neither ``--card`` nor the training
    run's file gave them."""

    @property
    def generic_card_notice(self) -> str:
        """The warning for :attr:`generic_card_fields`: what was guessed, and how to fix it."""
        guesses = ", ".join(GUESSES[f] for f in self.generic_card_fields)
        return (
            f"config {self.card.config_name!r} has no named card defaults that fit it, so the "
            f"card's {', '.join(self.generic_card_fields)} are generic guesses ({guesses}); "
            "re-export with --card FILE.json giving what the model was trained with"
        )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def build_card(
    config_name: str,
    config: dict[str, Any],
    overrides: dict[str, Any] | None = None,
    source_sha256: str | None = None,
) -> ModelCard:
    """The card for a config: named defaults, then ``overrides`` (e.g. from a JSON card)."""
    fields = default_card_fields(config_name, config)
    fields.update(overrides or {})
    _check_card_types(fields)
    norms = tuple(
        n if isinstance(n, Normalization) else Normalization(**n) for n in fields["normalization"]
    )
    card = ModelCard(
        config_name=config_name,
        model_config=config,
        modalities=tuple(fields["modalities"]),
        normalization=norms,
        class_names=tuple(fields["class_names"]),
        label_values=tuple(int(v) for v in fields["label_values"]),
        spacing=tuple(float(s) for s in fields["spacing"]),  # type: ignore[arg-type]
        patch_size=tuple(int(s) for s in config["input_size"]),  # type: ignore[arg-type]
        source_sha256=source_sha256,
        exporter_version=f"veloxseg {__version__}",
        custom_domain=PWA_DOMAIN,
        custom_opset=PWA_OPSET,
        extra=dict(fields.get("extra", {})),
    )
    channels, n_classes = sum(config["in_ch"]), int(config.get("n_classes", 2))
    if card.in_channels != channels:
        raise ValueError(
            f"card lists {card.in_channels} modalities but the model takes {channels} input "
            f"channels; pass --card with {channels} modalities and normalization entries"
        )
    if card.n_classes != n_classes:
        raise ValueError(
            f"card lists {card.n_classes} classes but the model outputs {n_classes}; "
            f"pass --card with {n_classes} class_names and label_values"
        )
    return card


_CARD_LISTS: dict[str, tuple[tuple[type, ...], str]] = {
    "modalities": ((str,), "strings"),
    "class_names": ((str,), "strings"),
    "label_values": ((int,), "integers"),
    "spacing": ((int, float), "numbers"),
    "normalization": ((dict, Normalization), 'objects such as {"scheme": "zscore"}'),
}
_NORMALIZATION_KEYS = tuple(Normalization.__dataclass_fields__)


def _check_card_types(fields: dict[str, Any]) -> None:
    """Refuse ill-typed card fields, naming the field: a string where a list belongs would become
    one modality per character, and a stray normalisation key a bare TypeError."""
    for key, (types_, what) in _CARD_LISTS.items():
        value = fields[key]
        ok = isinstance(value, list | tuple) and all(
            isinstance(v, types_) and not isinstance(v, bool) for v in value
        )
        if not ok:
            raise ExportError(f"card field {key!r} must be a list of {what}, got {value!r:.80}")
    for i, norm in enumerate(fields["normalization"]):
        unknown = sorted(set(norm) - set(_NORMALIZATION_KEYS)) if isinstance(norm, dict) else []
        if unknown:
            close = difflib.get_close_matches(unknown[0], _NORMALIZATION_KEYS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ExportError(
                f"card normalization entry {i} has unknown key {unknown[0]!r}; {hint}"
                f"keys: {', '.join(_NORMALIZATION_KEYS)}"
            )
    if not isinstance(fields.get("extra", {}), dict):
        raise ExportError(f"card field 'extra' must be a JSON object, got {fields['extra']!r:.80}")


def _custom_core(
    self: PairedWindowAttention,
    qs: list[torch.Tensor],
    ks: list[torch.Tensor],
    vs: list[torch.Tensor],
) -> list[torch.Tensor]:
    """Replacement for :meth:`PairedWindowAttention.core` during export."""
    tensors = [t for triple in zip(qs, ks, vs, strict=True) for t in triple]
    size = tuple(int(s) for s in qs[0].shape[2:])
    outs = PairedWindowAttentionFunction.apply(
        self.scheme, len(qs), size, *tensors, self.export_bias
    )
    return list(outs)


def _prepare_for_export(model: VeloxSeg) -> tuple[VeloxSeg, dict[str, tuple]]:
    """A copy whose PWA cores emit custom nodes, with each tiled bias as a constant buffer, and
    whose forward is :func:`export_forward` (label margins), with merged patch embeddings and
    patch merging as a strided convolution."""
    model = copy.deepcopy(model).eval()
    model.forward = types.MethodType(export_forward, model)
    stream = model.encoder.encoder_attn
    stream.embed = types.MethodType(merged_embed, stream)
    for module in model.modules():
        if isinstance(module, PatchMerging):
            module.forward = types.MethodType(patch_merging_forward, module)
    schemes: dict[str, tuple] = {}
    size = [s // model.patch_size for s in model.config["input_size"]]
    levels = model.encoder.encoder_attn.layers
    for level, layer in enumerate(levels):
        for block in layer.blocks:
            attn = block.attn
            modalities = len(attn.input_norms)
            with torch.no_grad():
                bias = attn.position_embedding.bias(modalities).detach().clone()
            attn.register_buffer("export_bias", bias)
            attn.core = types.MethodType(_custom_core, attn)
            key = scheme_key(attn.scheme, modalities, tuple(size))
            schemes[key] = (attn.scheme, modalities, tuple(size))
        if level < len(levels) - 1:
            size = [s // 2 for s in size]
    return model, schemes


def _trace_to_onnx(model: VeloxSeg, example: torch.Tensor, opset: int) -> onnx.ModelProto:
    buffer = io.BytesIO()
    outputs = output_names(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=["image"],
            output_names=outputs,
            dynamic_axes={"image": {0: "batch"}, **{name: {0: "batch"} for name in outputs}},
            custom_opsets={PWA_DOMAIN: PWA_OPSET},
            do_constant_folding=False,  # keep state-dict names on every weight
        )
    return onnx.load_from_string(buffer.getvalue())


def _declare_output_shapes(proto: onnx.ModelProto, cfg: dict[str, Any]) -> None:
    """Custom nodes hide output shapes from the tracer; state them: ``(batch, K, *patch)`` for
    the logits, ``(batch, K - 1, *patch)`` for the label margins."""
    k = cfg.get("n_classes", 2)
    for output, channels in zip(proto.graph.output, (k, k - 1), strict=False):
        dims = ["batch", channels, *cfg["input_size"]]
        output.CopyFrom(
            onnx.helper.make_tensor_value_info(output.name, onnx.TensorProto.FLOAT, dims)
        )


def _check_output(output: Path, inputs: Iterable[tuple[str, Path]], overwrite: bool) -> None:
    """Refuse, before any work, an output that is one of the inputs (symlinks and hard links
    included), a folder, or an existing file without ``overwrite``."""
    if output.is_dir():
        raise ExportError(f"output {output} is a folder; pass a file path such as model.onnx")
    if not output.exists():
        return
    named = {path: what for what, path in inputs}
    if (path := replaced_input(output, named)) is not None:
        raise ExportError(
            f"output {output} is the {named[path]} {path}; export never replaces its inputs, "
            "choose another output path"
        )
    if not overwrite:
        raise ExportError(f"{output} exists; pass --overwrite to replace it")


def _with_training_normalization(
    overrides: dict[str, Any], sidecar: Path | None
) -> tuple[dict[str, Any], Path | None]:
    """``overrides`` on top of the training run's modalities, normalisation and spacing from
    ``sidecar``, used when it exists and the overrides give no normalisation of their own."""
    if sidecar is None or "normalization" in overrides or not sidecar.is_file():
        return overrides, None
    trained = load_card_file(sidecar)
    if "normalization" not in trained:
        raise ExportError(f"{sidecar} holds no 'normalization' list; fix or remove it")
    fields = {k: trained[k] for k in _PREPROCESSING_FIELDS if k in trained}
    return {**fields, **overrides}, sidecar


def export_onnx(
    checkpoint: str | Path | None,
    config: str | Path | dict[str, Any],
    output: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    card_overrides: dict[str, Any] | str | Path | None = None,
    verify: bool = True,
    seed: int = 0,
    tolerance: float = 1e-3,
    overwrite: bool = False,
) -> ExportResult:
    """Export a checkpoint (or, with ``checkpoint=None``, seeded weights) to ``output``.

    ``card_overrides`` (a dict, or a JSON file of them) replace the config's card defaults. When
    they give no normalisation, a ``normalization.json`` beside the checkpoint (from ``veloxseg
    train``) supplies it, since the config's CT statistics are only placeholders.

    The file is written beside ``output`` under a temporary name and renamed into place only
    when complete and, with ``verify``, run in ONNX Runtime and OpenVINO (f32) on a random input
    and compared with PyTorch: a max |Δlogit| above ``tolerance`` raises
    :class:`ExportMismatchError` and leaves no file (an existing ``output`` is untouched).
    """
    output = Path(output)
    if opset not in SUPPORTED_OPSETS:
        raise ExportError(
            f"opset {opset} is not supported; use {SUPPORTED_OPSETS.start} to "
            f"{SUPPORTED_OPSETS.stop - 1} (default {DEFAULT_OPSET})"
        )
    if checkpoint is not None and Path(checkpoint).is_dir():
        found = ", ".join(sorted(p.name for p in Path(checkpoint).glob("*.pth"))) or "none"
        raise ExportError(
            f"checkpoint {checkpoint} is a folder; pass a .pth file in it (found: {found})"
        )
    sidecar = Path(checkpoint).parent / NORMALIZATION_FILE if checkpoint is not None else None
    inputs = [
        (what, Path(path))
        for what, path in (
            ("checkpoint", checkpoint),
            ("card file", card_overrides),
            ("config file", config),
            ("training normalisation file", sidecar),
        )
        if isinstance(path, str | Path)
    ]
    _check_output(output, inputs, overwrite)
    if isinstance(card_overrides, str | Path):
        card_overrides = load_card_file(card_overrides)
    overrides, normalization_file = _with_training_normalization(card_overrides or {}, sidecar)
    name, cfg = resolve_config(config)
    if checkpoint is None:
        model = VeloxSeg(**cfg).eval()
        model.load_state_dict(seeded_state_dict(model, seed))
        sha = None
    else:
        model = load_checkpoint(checkpoint, config)  # by name, so errors can name it
        sha = _sha256(Path(checkpoint))
    try:
        card = build_card(name, cfg, overrides, sha)
    except ValueError as e:
        if normalization_file is None:
            raise
        raise ExportError(
            f"{e} (normalisation read from {normalization_file} beside the checkpoint; "
            "pass a card with a 'normalization' list to override it)"
        ) from e
    placeholders = "normalization" not in overrides and any(
        n.scheme == "ct" for n in card.normalization
    )
    generic = tuple(f for f in guessed_card_fields(name, cfg) if f not in overrides)
    export_model, schemes = _prepare_for_export(model)
    example = torch.zeros(1, sum(cfg["in_ch"]), *cfg["input_size"])
    proto = _trace_to_onnx(export_model, example, opset)
    attach_functions(proto, schemes, opset)
    _declare_output_shapes(proto, cfg)
    proto.ir_version = IR_VERSION
    proto.producer_name = "veloxseg"
    proto.producer_version = __version__
    onnx.helper.set_model_props(proto, {CARD_KEY: card.to_json()})
    onnx.checker.check_model(proto)
    created = [p for p in (output.parent, *output.parent.parents) if not p.exists()]
    output.parent.mkdir(parents=True, exist_ok=True)
    diffs: dict[str, float] = {}
    try:
        with atomic_writer(output) as staged:
            staged.write(proto.SerializeToString())
            staged.flush()
            if verify:
                from veloxseg.export.verify import verify_export

                diffs = verify_export(model, Path(staged.name), tolerance=tolerance)
    except BaseException:  # a failed export leaves nothing, not even the folders it made
        for folder in created:  # deepest first
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    return ExportResult(
        output, card, len(custom_nodes(proto)), diffs, normalization_file, placeholders, generic
    )


_CARD_FILE_FIELDS = (
    "modalities",
    "normalization",
    "class_names",
    "label_values",
    "spacing",
    "extra",
)
_PROVENANCE_FIELDS = ("train_seeds",)  # recorded in normalization.json by `veloxseg train`


def load_card_file(path: str | Path) -> dict[str, Any]:
    """Card overrides from a JSON file (any subset of the card's fields)."""
    try:
        fields = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read card file {path}: {e}") from e
    if not isinstance(fields, dict):
        raise ValueError(f"card file {path} must hold a JSON object of card fields")
    for key in list(fields):  # a misspelt key would silently keep the default, e.g. CT stats
        if key in _PROVENANCE_FIELDS:
            del fields[key]
        elif key not in _CARD_FILE_FIELDS:
            close = difflib.get_close_matches(key, _CARD_FILE_FIELDS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValueError(
                f"card file {path} has unknown field {key!r}; {hint}"
                f"fields: {', '.join(_CARD_FILE_FIELDS)}"
            )
    return fields
