"""Fuzzed NIfTI input: whatever the file holds, ``veloxseg segment`` either writes a valid label
map on the input's grid (exit 0) or refuses it cleanly: exit 2, one ``error:`` line, no
traceback, no warning, and no output or sidecar.

Files are built byte by byte (header fields nibabel would never write: NaN affines, zero or NaN
scaling, 1D to 5D shapes, complex and RGB voxels, NIfTI-2, big-endian, random header bytes,
truncation), so the test reaches the reader's corners. ``VELOXSEG_FUZZ_EXAMPLES`` sets the
number of examples (default 100); with ``VELOXSEG_FUZZ_REPORT=1`` the outcome counts go to
``benchmarks/results/fuzz_report.json``.
"""

from __future__ import annotations

import gzip
import json
import os
import tempfile
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from nibabel.spatialimages import HeaderDataError
from typer.testing import CliRunner

from veloxseg.assets import bundled_model
from veloxseg.cli import app as cli
from veloxseg.runtime import Engine

EXAMPLES = int(os.environ.get("VELOXSEG_FUZZ_EXAMPLES", "100"))
REPORT = Path(__file__).parents[1] / "benchmarks" / "results" / "fuzz_report.json"
RGB = np.dtype([("R", "u1"), ("G", "u1"), ("B", "u1")])
DTYPES = ("float32", "int16", "uint8", "int8", "uint16", "int32", "uint32", "int64", "uint64",
          "float64", "float16", "complex64", "complex128", "rgb")  # fmt: skip
UNASSIGNED_CODE = 4096  # NIfTI has no float16: a writer inventing one stores some unknown code
AFFINES = ("diag", "diag", "diag", "flipped", "oblique", "oblique", "singular", "nan", "huge",
           "giant")  # fmt: skip
SCALES = (1.0, 1.0, 1.0, 0.0, np.nan, np.inf, -np.inf, 2.5, -1.0, 1e-20, 1e36)
INTERCEPTS = (0.0, 0.0, 0.0, 0.0, -1024.0, np.nan, np.inf, 1e30)
# Why a refusal happened, for the report: the first phrase found in the message names it.
REASONS = {
    "not 3D": ("2D image", "D with shape", "volume(s)", "4D with"),
    "voxel limit": ("more than the limit", "over the limit"),
    "not scalar voxels": ("stores",),
    "degenerate affine": ("degenerate",),
    "NaN/Inf voxels": ("NaN/Inf",),
    "truncated": ("truncated or corrupt",),
    "invalid scaling": ("invalid intercept",),
    "unreadable header": ("not a readable NIfTI",),
}

runner = CliRunner()


@dataclass(frozen=True)
class Spec:
    """One fuzzed case: how its header, voxels and bytes are made."""

    shape: tuple[int, ...]
    dtype: str
    affine: str
    codes: tuple[int, int]
    slope: float
    inter: float
    seed: int
    values: str
    stacked: bool
    gz: bool
    truncate: float | None
    header_noise: int
    nifti2: bool
    big_endian: bool


@st.composite
def specs(draw: st.DrawFn) -> Spec:
    # Hypothesis leans towards the first choice of each list: a valid one comes first.
    ndim = draw(st.sampled_from([3, 3, 3, 3, 3, 3, 3, 3, 4, 4, 1, 2, 5]))
    shape = tuple(draw(st.sampled_from([*range(2, 12), 1])) for _ in range(ndim))
    if ndim == 4 and draw(st.booleans()):
        shape = (*shape[:3], draw(st.sampled_from([1, 2])))
    return Spec(
        shape=shape,
        dtype=draw(st.sampled_from(DTYPES)),
        affine=draw(st.sampled_from(AFFINES)),
        codes=(draw(st.sampled_from([1, 2, 0])), draw(st.sampled_from([1, 2, 4, 0]))),
        slope=draw(st.sampled_from(SCALES)),
        inter=draw(st.sampled_from(INTERCEPTS)),
        seed=draw(st.integers(0, 2**32 - 1)),
        values=draw(st.sampled_from(["normal", "normal", "normal", "constant", "extremes", "nan"])),
        stacked=ndim == 4 and draw(st.booleans()),
        gz=draw(st.booleans()),
        truncate=draw(st.floats(0.0, 1.0)) if draw(st.integers(0, 5)) == 5 else None,
        header_noise=draw(st.sampled_from([0, 0, 0, 0, 0, 1, 4])),
        nifti2=draw(st.booleans()),
        big_endian=draw(st.booleans()),
    )


def _affine(kind: str, rng: np.random.Generator) -> np.ndarray:
    affine = np.diag([*rng.uniform(0.3, 6.0, 3), 1.0])
    affine[:3, 3] = rng.uniform(-200, 200, 3)
    if kind == "flipped":
        affine = affine @ np.diag([-1.0, 1.0, -1.0, 1.0])[:, [1, 0, 2, 3]]
    elif kind == "oblique":
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        affine[:3, :3] = q @ affine[:3, :3]
    elif kind == "singular":
        affine[:3, rng.integers(3)] = 0.0 if rng.random() < 0.5 else affine[:3, 0]
    elif kind == "nan":
        affine[rng.integers(3), rng.integers(4)] = np.nan
    elif kind == "huge":
        affine[:3, :3] *= 1e4
    elif kind == "giant":  # finite, but its grid at the model's spacing overflows int64
        affine[:3, :3] *= 1e30
    return affine


def _voxels(spec: Spec, rng: np.random.Generator) -> np.ndarray:
    if spec.dtype == "rgb":
        data = np.zeros(spec.shape, RGB)
        for channel in "RGB":
            data[channel] = rng.integers(0, 256, spec.shape)
        return data
    dtype = np.dtype(spec.dtype)
    info = np.iinfo(dtype) if dtype.kind in "iu" else np.finfo(dtype)
    if spec.values == "extremes":  # the type's limits: sums and differences overflow
        return rng.choice(np.array([info.min, info.max], dtype), spec.shape)
    values = (
        np.full(spec.shape, 7.0) if spec.values == "constant" else rng.normal(100, 400, spec.shape)
    )
    data = np.clip(values, info.min, info.max).astype(dtype)
    if spec.values == "nan" and dtype.kind in "fc" and data.size:
        data.flat[rng.integers(data.size)] = rng.choice([np.nan, np.inf, -np.inf])
    return data


def _header(spec: Spec, affine: np.ndarray, dtype: np.dtype) -> nib.Nifti1Header:
    kind = nib.Nifti2Header if spec.nifti2 else nib.Nifti1Header
    header = kind(endianness=">" if spec.big_endian else "<")
    header.set_data_shape(spec.shape)
    if dtype == np.float16:
        header.set_data_dtype(np.int16)
        header["datatype"] = UNASSIGNED_CODE
    else:
        header.set_data_dtype(dtype)
    pixdim = header["pixdim"]
    pixdim[1:4] = np.linalg.norm(affine[:3, :3], axis=0)
    header["pixdim"] = pixdim
    if spec.codes[0]:
        try:  # nibabel cannot express every affine as a quaternion; keep the default then
            with np.errstate(invalid="ignore", divide="ignore"):
                header.set_qform(affine, code=spec.codes[0])
        except (HeaderDataError, np.linalg.LinAlgError):
            header["qform_code"] = spec.codes[0]
    header["sform_code"] = spec.codes[1]
    header["srow_x"], header["srow_y"], header["srow_z"] = affine[:3]
    header["scl_slope"], header["scl_inter"] = spec.slope, spec.inter
    header["magic"] = b"n+2" if spec.nifti2 else b"n+1"
    header["vox_offset"] = header.single_vox_offset
    return header


def _nifti_bytes(spec: Spec, data: np.ndarray, rng: np.random.Generator) -> bytes:
    affine = _affine(spec.affine, rng)
    block = bytearray(_header(spec, affine, data.dtype).binaryblock)
    for _ in range(spec.header_noise):
        block[rng.integers(len(block))] = rng.integers(256)
    data = data.astype(data.dtype.newbyteorder(">" if spec.big_endian else "<"))
    raw = bytes(block) + bytes(4) + data.tobytes(order="F")
    if spec.gz:
        raw = gzip.compress(raw, compresslevel=1, mtime=0)
    if spec.truncate is not None:
        raw = raw[: int(len(raw) * spec.truncate)]
    return raw


def _write_case(spec: Spec, folder: Path) -> list[Path]:
    """One 4D file (stacked) or two files sharing one header, differing in voxels."""
    suffix = ".nii.gz" if spec.gz else ".nii"
    paths = [folder / f"case_{c:04d}{suffix}" for c in range(1 if spec.stacked else 2)]
    for c, path in enumerate(paths):
        rng = np.random.default_rng(spec.seed)  # same header (affine, noise) for both files
        data = _voxels(spec, np.random.default_rng([spec.seed, c]))
        path.write_bytes(_nifti_bytes(spec, data, rng))
    return paths


def _spec(**changes: object) -> Spec:
    """A valid case with ``changes``: the regressions fuzzing found, pinned as examples."""
    fields = dict(shape=(7, 6, 5), dtype="float32", affine="diag", codes=(1, 1), slope=1.0,
                  inter=0.0, seed=0, values="normal", stacked=False, gz=True, truncate=None,
                  header_noise=0, nifti2=False, big_endian=False)  # fmt: skip
    return Spec(**{**fields, **changes})  # type: ignore[arg-type]


def _features(spec: Spec) -> list[str]:
    """What is unusual about ``spec``, for the report."""
    flags = {
        f"{len(spec.shape)}D": True,
        f"{spec.affine} affine": True,
        f"{spec.values} values": True,
        "truncated": spec.truncate is not None,
        "random header bytes": spec.header_noise > 0,
        "slope 0/NaN/Inf": not np.isfinite(spec.slope) or spec.slope == 0,
        "intercept NaN/Inf": not np.isfinite(spec.inter),
        "NIfTI-2": spec.nifti2,
        "big-endian": spec.big_endian,
        "gzip": spec.gz,
        "4D stack of modalities": spec.stacked,
    }
    return [name for name, present in flags.items() if present]


def _reason(message: str) -> str:
    found = (name for name, phrases in REASONS.items() if any(p in message for p in phrases))
    return next(found, "other")


@pytest.fixture(scope="module")
def one_engine() -> Iterator[None]:
    """Compile the model once: every example still runs the whole command from argument
    parsing to writing outputs, only without recompiling an unchanged model."""
    engine = Engine.open(bundled_model(), threads=1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli, "_open_engine", lambda *args: engine)
        yield


def _check_outcome(spec: Spec, inputs: list[Path], out: Path) -> str:
    """Run one example and assert its contract; return the outcome's name."""
    args = ["segment", "-o", str(out), "-q", *(a for p in inputs for a in ("-i", str(p)))]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = runner.invoke(cli.app, args)
    assert "Traceback" not in result.output, (spec, result.output)
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning | UserWarning)], (
        spec, [str(w.message) for w in caught],
    )  # fmt: skip
    sidecar = out.with_name("seg.json")
    if result.exit_code == 0:
        source = nib.load(inputs[0])
        seg = nib.load(out)
        labels = np.asarray(seg.dataobj)
        assert labels.shape == source.shape[:3] and seg.get_data_dtype() == np.uint8, spec
        assert set(np.unique(labels)) <= {0, 1}, spec
        np.testing.assert_allclose(seg.affine, source.affine, rtol=1e-6, atol=1e-4)
        assert json.loads(sidecar.read_text())["shape"] == list(source.shape[:3])
        return "ok"
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2, (spec, result.exit_code, result.output)
    assert len(lines) == 1 and lines[0].startswith("error:"), (spec, result.output)
    assert not out.exists() and not sidecar.exists(), spec
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], spec
    return f"refused: {_reason(lines[0])}"


def test_fuzzed_nifti_segments_or_fails_cleanly(one_engine: None) -> None:
    outcomes: Counter[str] = Counter()
    by_feature: Counter[str] = Counter()

    @example(_spec(affine="giant"))  # used to overflow int64: exit 1
    @example(_spec(values="extremes"))  # used to overflow in normalisation: a warning line
    @example(_spec(dtype="int16", slope=1e36))  # used to overflow in the cast: a warning line
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(specs())
    def run(spec: Spec) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            inputs = _write_case(spec, folder)
            (folder / "out").mkdir()
            outcome = _check_outcome(spec, inputs, folder / "out" / "seg.nii.gz")
        outcomes[outcome] += 1
        for feature in (spec.dtype, *_features(spec)):
            by_feature[f"{feature}: {'ok' if outcome == 'ok' else 'refused'}"] += 1

    run()
    assert outcomes["ok"] > 0 and sum(outcomes.values()) >= EXAMPLES
    if os.environ.get("VELOXSEG_FUZZ_REPORT") == "1":
        report = {
            "examples": sum(outcomes.values()),
            "succeeded": outcomes["ok"],
            "refused_cleanly": sum(n for k, n in outcomes.items() if k != "ok"),
            "contract_violations": 0,  # any one fails the test before this is written
            "outcomes": dict(outcomes.most_common()),
            "by_feature": dict(sorted(by_feature.items())),
        }
        REPORT.parent.mkdir(parents=True, exist_ok=True)
        REPORT.write_text(json.dumps(report, indent=2) + "\n")
