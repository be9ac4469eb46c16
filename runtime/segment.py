"""Segment one case end to end: NIfTI in, NIfTI (+ JSON sidecar, preview) out.

Stages are functions over arrays plus small metadata records, each with its inverse:
load -> canonical (RAS) -> normalise -> resample to model spacing -> tiled inference ->
resample scores back + argmax -> original orientation -> atomic save.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.affines import voxel_sizes

from veloxseg.runtime.card import ModelCard
from veloxseg.runtime.engine import Engine
from veloxseg.runtime.errors import InputError
from veloxseg.runtime.model_file import MARGINS
from veloxseg.runtime.nifti_io import (
    DEFAULT_MAX_VOXELS,
    TRANSLATION_TOL_MM,
    ImageGeometry,
    load_case,
    save_labels,
    save_probabilities,
)
from veloxseg.runtime.normalization import normalize
from veloxseg.runtime.orientation import from_canonical, to_canonical
from veloxseg.runtime.output_files import (
    atomic_write_bytes,
    create_output_folder,
    nearest_unwritable_folder,
    remove_dead_temps,
    replaced_input,
    staged_outputs,
)
from veloxseg.runtime.resampling import (
    labels_from_resampled_scores,
    new_shape,
    resample_to_shape,
    resample_to_spacing,
)
from veloxseg.runtime.sliding_window import softmax_inplace
from veloxseg.runtime.tiling import Blend, labels_from_margins

__all__ = [
    "CaseResult",
    "SegmentOptions",
    "check_output",
    "check_outputs",
    "extent_warnings",
    "geometry_warnings",
    "input_warnings",
    "output_paths",
    "segment_case",
    "to_model_grid",
]


@dataclass(frozen=True)
class SegmentOptions:
    """Inference and output options of ``veloxseg segment``."""

    overlap: float = 0.25
    blend: Blend = "constant"
    batch_size: int = 1
    tta: bool = False
    save_probabilities: bool = False
    preview: bool = False
    progress: bool = False
    max_voxels: int = DEFAULT_MAX_VOXELS

    def __post_init__(self) -> None:
        """Refuse bad values when the options are made, not once per case after its load."""
        if self.blend not in ("constant", "gaussian"):
            raise ValueError(f"blend must be constant or gaussian, got {self.blend!r}")
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {self.batch_size}")
        if self.max_voxels < 1:
            raise ValueError(f"max voxels must be at least 1, got {self.max_voxels}")


@dataclass
class CaseResult:
    """Where a case's outputs went and what it took."""

    output: Path
    sidecar: Path
    timings: dict[str, float] = field(default_factory=dict)
    preview: Path | None = None
    probabilities: Path | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def output_paths(output: Path) -> dict[str, Path]:
    """The files a case writes beside ``output`` (``x.nii.gz`` -> ``x.json``, ``x.png``...);
    probabilities take the labels' suffix, so ``-o x.nii`` writes them uncompressed too (a
    float volume per class: compressing 2 GB of them took 40 s on a whole-body grid)."""
    name = output.name
    stem = name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else output.stem
    return {
        "labels": output,
        "sidecar": output.with_name(stem + ".json"),
        "preview": output.with_name(stem + ".png"),
        "probabilities": output.with_name(stem + "_probabilities" + name[len(stem) :]),
    }


class _Stopwatch:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - start, 4)


def check_output(output: Path, inputs: Sequence[Path]) -> None:
    """Refuse an output path that is not a NIfTI name, lies in a folder that cannot be written
    (found here, not after the inference), or names any file the case may write (labels,
    sidecar, preview, probabilities) that is one of the inputs."""
    if output.is_dir():
        raise InputError(
            f"output {output} is a folder; name the file for one case (e.g. {output}/CASE.nii.gz)"
            ", or pass a folder of cases as -i"
        )
    if "." not in output.name:  # `-o out/`, meaning a folder, arrives here without its slash
        raise InputError(
            f"output {output} has no .nii.gz suffix: name the file for one case (e.g. "
            f"{output}/CASE.nii.gz); a folder of outputs needs a folder of cases as -i"
        )
    if not output.name.lower().endswith((".nii.gz", ".nii")):
        raise InputError(
            f"output {output} must end in .nii.gz or .nii (e.g. {output.with_suffix('')}.nii.gz)"
        )
    if (folder := nearest_unwritable_folder(output.parent)) is not None:
        raise InputError(f"cannot write {output}: {folder} is not writable; choose another -o")
    for path in output_paths(output).values():
        if (source := replaced_input(path, inputs)) is not None:
            raise InputError(
                f"output {path} would overwrite input {source}; choose another output path"
            )


def check_outputs(
    output: Path, inputs: Sequence[Path], options: SegmentOptions, overwrite: bool
) -> None:
    """:func:`check_output`, then, unless ``overwrite``, refuse to replace any file the case
    would write (labels, sidecar, and probabilities and preview where asked for)."""
    check_output(output, inputs)
    if overwrite:
        return
    paths = output_paths(output)
    wanted = ["labels", "sidecar"]
    wanted += ["probabilities"] * options.save_probabilities + ["preview"] * options.preview
    if taken := [paths[name] for name in wanted if paths[name].exists()]:
        raise InputError(f"{taken[0]} exists; pass --overwrite to replace it")


def to_model_grid(
    data: np.ndarray, affine: np.ndarray, card: ModelCard, max_voxels: int = DEFAULT_MAX_VOXELS
) -> tuple[np.ndarray, bool]:
    """Canonical ``(C, X, Y, Z)`` data to the model's input: normalised (in place), then
    resampled to the card's spacing; returns ``(volume, resampled?)``."""
    spacing = tuple(float(s) for s in voxel_sizes(affine))
    target = card.spacing
    shape = new_shape(data.shape[1:], spacing, target)
    if math.prod(shape) > max_voxels:  # Python ints: a 1e30 mm voxel must not overflow int64
        raise InputError(
            f"resampled to the model spacing {target} mm the image would have {shape} voxels, "
            f"over the limit of {max_voxels}; check the header's voxel size ({spacing} mm)"
        )
    normalize(data, card.normalization)
    volume = resample_to_spacing(data, spacing, target)
    return volume, volume is not data


def input_warnings(data: np.ndarray, card: ModelCard) -> list[str]:
    """Signs that a case is not what the card expects, that still let it run: a CT channel
    without negative values is not in HU (air is -1000), as when modalities are swapped or
    integer CT lost its ``scl_inter`` of -1024, and the result would be meaningless."""
    found = []
    for name, scheme, channel in zip(card.modalities, card.normalization, data, strict=True):
        low = float(channel.min())
        if scheme.scheme == "ct" and low >= 0:
            found.append(
                f"{name} has no negative values (min {low:g}), so it is not in Hounsfield units; "
                "check the modality order (`veloxseg info`) and that the file's scl_inter "
                "(usually -1024) is set"
            )
    return found


def geometry_warnings(geometry: ImageGeometry) -> list[str]:
    """Headers that tools read silently as something they may not be: a voxel size of 0, and
    placements that tools read differently. Codes both 0 say nothing about
    orientation: nibabel (and so the model) takes LAS, ITK LPS, so the model may see the scan
    mirrored. A qform and sform that disagree place the scan in two ways: the sform is used, as
    nibabel does, while ITK tools may use the qform (outputs keep both, so each tool stays
    consistent with itself)."""
    return _zero_size_warnings(geometry) + _placement_warnings(geometry.header)


def _placement_warnings(header: nib.Nifti1Header) -> list[str]:
    q_code, s_code = int(header["qform_code"]), int(header["sform_code"])
    if not q_code and not s_code:
        return [
            "the header's qform_code and sform_code are both 0, so the scan's orientation is "
            "unknown; it was taken as LAS (nibabel's default; ITK tools assume LPS): set the "
            "qform/sform from the scanner's DICOM if the labels look mirrored"
        ]
    if not (q_code and s_code):
        return []
    try:
        gap = float(np.abs(header.get_qform() - header.get_sform()).max())
    except ValueError:  # a qform quaternion past unit length: no placement to compare
        return []
    if gap > TRANSLATION_TOL_MM:
        return [
            f"the header's qform and sform disagree (by up to {gap:.3g} mm); the sform was used, "
            "as nibabel does, while ITK-based tools may place the scan by the qform"
        ]
    return []


def _zero_size_warnings(geometry: ImageGeometry) -> list[str]:
    """A voxel size of 0 with no sform is read as 1 mm by every tool, silently: right for the
    placement only if it is, and wrong for the sidecar's mL otherwise."""
    if not geometry.zero_size_axes:
        return []
    axes = ", ".join("XYZ"[i] for i in geometry.zero_size_axes)
    return [
        f"the header stores voxel size 0 along {axes}; it was read as 1 mm there (as nibabel and "
        "ITK do), so the scan's size and the volumes in mL are right only if that is the true "
        "voxel size"
    ]


def extent_warnings(
    shape: Sequence[int], canonical_affine: np.ndarray, card: ModelCard
) -> list[str]:
    """A scan that spans less than one model voxel along an axis is all but erased by the
    resampling: most likely its voxel sizes are in the wrong unit (microns written as mm)."""
    spacing = voxel_sizes(canonical_affine)
    extent = [n * float(s) for n, s in zip(shape, spacing, strict=True)]
    if all(e >= t for e, t in zip(extent, card.spacing, strict=True)):
        return []
    sizes = " x ".join(f"{e:.3g}" for e in extent)
    model = " x ".join(f"{t:g}" for t in card.spacing)
    return [
        f"the scan spans only {sizes} mm, less than one model voxel ({model} mm) along an axis; "
        "check the header's voxel sizes (pixdim) and their unit"
    ]


def _map_labels(indices: np.ndarray, label_values: Sequence[int]) -> np.ndarray:
    """Class indices to the card's label values (e.g. BraTS index 3 -> label 4)."""
    if list(label_values) == list(range(len(label_values))):
        return indices
    lut = np.asarray(label_values, dtype=np.uint16 if max(label_values) > 255 else np.uint8)
    return lut[indices]


def _infer_labels(
    engine: Engine, volume: np.ndarray, canonical_shape: tuple[int, ...], resampled: bool,
    options: SegmentOptions,
) -> tuple[np.ndarray, np.ndarray | None]:  # fmt: skip
    """Class indices on the canonical input grid, and probabilities there if asked for."""
    kwargs = dict(
        overlap=options.overlap,
        blend=options.blend,
        batch_size=options.batch_size,
        tta=options.tta,
        progress=options.progress,
    )
    if not options.save_probabilities and not resampled:
        return engine.predict_volume(volume, output="labels", **kwargs), None
    # Labels come from the same scores whether or not probabilities are saved, so the flag
    # only adds a file: the labels never change with it, even where bf16 rounding would.
    margins = engine.label_output == MARGINS  # K-1 channels instead of K
    scores = engine.predict_volume(volume, output="margins" if margins else "logits", **kwargs)
    if resampled:
        labels = labels_from_resampled_scores(scores, canonical_shape, margins=margins)
    else:
        indices = labels_from_margins(scores) if margins else np.argmax(scores, axis=0)
        labels = indices.astype(np.uint8 if engine.metadata.n_classes <= 256 else np.uint16)
    if not options.save_probabilities:
        return labels, None
    return labels, _probabilities(scores, canonical_shape, margins)


def _probabilities(scores: np.ndarray, shape: tuple[int, ...], margins: bool) -> np.ndarray:
    """Class probabilities ``(K, *shape)``: the softmax of ``scores`` resampled to ``shape``
    (scores, not probabilities, are resampled, as nnU-Net resamples logits). Margins get class
    0's score, 0, prepended (softmax ignores a per-voxel shift, so this is the softmax of the
    logits). The result is the only array of its size: a 512 x 512 x 1000 grid holds 1 GB per
    class."""
    n_classes = scores.shape[0] + int(margins)
    probs = np.empty((n_classes, *shape), dtype=np.float32)
    if margins:
        probs[0] = 0.0
    resample_to_shape(scores, shape, out=probs[int(margins) :])
    softmax_inplace(probs)
    return probs


def segment_case(
    engine: Engine,
    inputs: Sequence[Path],
    output: Path,
    options: SegmentOptions | None = None,
    *,
    overwrite: bool = False,
) -> CaseResult:
    """Segment the scan in ``inputs`` (one file per modality, or one 4D file) into ``output``.

    The label map has the input's shape, affine and qform/sform codes; nothing is written under
    a final name unless the whole case succeeded, and existing outputs are replaced only with
    ``overwrite``.
    """
    options = options or SegmentOptions()
    output = Path(output)
    check_outputs(output, inputs, options, overwrite)
    for path in output_paths(output).values():  # a killed run's, whatever this run writes
        remove_dead_temps(path)
    create_output_folder(output.parent)  # before the work: a missing folder costs no inference
    card = engine.metadata
    clock = _Stopwatch()
    with clock.stage("load"):
        data, geometry = load_case(
            inputs, card.in_channels, max_voxels=options.max_voxels, modality_names=card.modalities
        )
    warnings = input_warnings(data, card) + geometry_warnings(geometry)
    if options.preview:  # a sample of the first modality, kept until the labels are known
        from veloxseg.runtime.preview import preview_stride

        stride = preview_stride(geometry.shape)
        background = data[0, ::stride, ::stride, ::stride].copy()
    with clock.stage("preprocess"):
        canonical, canonical_affine, reorientation = to_canonical(data, geometry.affine)
        canonical = np.ascontiguousarray(canonical)
        canonical_shape = canonical.shape[1:]
        warnings += extent_warnings(canonical_shape, canonical_affine, card)
        volume, resampled = to_model_grid(canonical, canonical_affine, card, options.max_voxels)
        del data, canonical
    with clock.stage("inference"):
        indices, probs = _infer_labels(engine, volume, canonical_shape, resampled, options)
        del volume
    with clock.stage("postprocess"):
        labels = np.ascontiguousarray(
            from_canonical(_map_labels(indices, card.label_values), reorientation)
        )
    paths = output_paths(output)
    result = CaseResult(output=output, sidecar=paths["sidecar"], warnings=warnings)
    with staged_outputs():  # all outputs appear together (renamed at the end), sidecar last
        with clock.stage("save"):
            save_labels(labels, geometry, paths["labels"])
            if probs is not None:
                probs = from_canonical(probs, reorientation)  # a view, written slab by slab
                save_probabilities(probs, geometry, paths["probabilities"])
                result.probabilities = paths["probabilities"]
            if options.preview:
                from veloxseg.runtime.preview import write_preview

                write_preview(labels, background, geometry, paths["preview"], stride)
                result.preview = paths["preview"]
        result.timings = clock.timings
        result.summary = _sidecar(engine, labels, geometry, inputs, result)
        sidecar = (json.dumps(result.summary, indent=2) + "\n").encode()
        atomic_write_bytes(paths["sidecar"], sidecar)
    return result


def _sidecar(
    engine: Engine,
    labels: np.ndarray,
    geometry: ImageGeometry,
    inputs: Sequence[Path],
    result: CaseResult,
) -> dict[str, Any]:
    card = engine.metadata
    voxel_ml = abs(float(np.linalg.det(geometry.affine[:3, :3]))) / 1000.0  # sheared grids too
    counts = _label_counts(labels, max(card.label_values) + 1)
    per_label = {
        name: {
            "label": int(value),
            "voxels": int(counts[value]),
            "volume_ml": round(float(counts[value]) * voxel_ml, 3),
        }
        for name, value in zip(card.class_names, card.label_values, strict=True)
    }
    return {
        "inputs": [os.path.abspath(p) for p in inputs],
        "output": os.path.abspath(result.output),
        "shape": list(geometry.shape),
        "spacing_mm": [round(s, 6) for s in geometry.spacing],  # no float32 noise
        "labels": per_label,
        "timings_s": result.timings,
        "backend": engine.backend_name,
        "precision": engine.precision,
        "model_sha256": engine.model.sha256,
        "model_config": card.config_name,
        "warnings": result.warnings,
        **_probabilities_entry(result, card),
    }


def _label_counts(labels: np.ndarray, minlength: int) -> np.ndarray:
    """Voxels per label value, counted one X slice at a time: ``np.bincount`` first converts
    its input to int64, 8 bytes per voxel (2 GB for a 512 x 512 x 1000 label map)."""
    counts = np.zeros(minlength, dtype=np.int64)
    for plane in labels:
        counts += np.bincount(plane.ravel(), minlength=minlength)
    return counts


def _probabilities_entry(result: CaseResult, card: ModelCard) -> dict[str, Any]:
    """Where the probabilities went and the label each of their volumes is for: volume k is
    class k, which is not label k where the card maps labels (BraTS volume 3 is label 4)."""
    if result.probabilities is None:
        return {}
    return {
        "probabilities": {
            "output": os.path.abspath(result.probabilities),
            "labels": [int(v) for v in card.label_values],
        }
    }
