"""Read an input case from NIfTI and write label maps and probabilities back onto its grid.

Arrays here are in the file's own voxel order: ``load_case`` returns ``(C, X, Y, Z)`` float32 and
``save_labels`` takes ``(X, Y, Z)``; reorienting to RAS+ is ``veloxseg.runtime.orientation``'s job.

Every user-fixable problem with an input raises ``InputError`` with a one-line message. Notes:

* Intensity scaling follows NIfTI/nibabel: a ``scl_slope`` of 0, NaN or Inf means "no scaling"
  (slope 1, intercept 0); a valid slope with a NaN intercept is rejected as a corrupt header.
* Modalities must share one voxel grid: equal shapes, and affines equal within
  ``TRANSLATION_TOL_MM`` on the origin and ``LINEAR_RTOL`` (relative to each axis' voxel size) on
  the rotation/zoom part. That absorbs float32 header round-off, never a real misregistration.
* A 3D image with an axis of size 1 is a 2D slice and is rejected; trailing singleton axes beyond
  the third (``X, Y, Z, 1``) are squeezed.
* Outputs copy the input's qform and sform fields verbatim (codes included), so SimpleITK, ITK-SNAP
  and nibabel place them exactly where they place the input. Writes are atomic.
"""

from __future__ import annotations

import gzip
import itertools
import logging
import math
import os
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import nibabel as nib
import numpy as np
from nibabel import imageglobals
from nibabel.affines import voxel_sizes
from nibabel.filebasedimages import ImageFileError
from nibabel.openers import ImageOpener
from nibabel.spatialimages import HeaderDataError
from nibabel.volumeutils import apply_read_scaling, array_from_file, seek_tell

from veloxseg.runtime.errors import InputError, one_line
from veloxseg.runtime.orientation import empty_in_canonical_layout
from veloxseg.runtime.output_files import atomic_writer, replaced_input

__all__ = [
    "CONVERT_DICOM",
    "DEFAULT_MAX_VOXELS",
    "LINEAR_RTOL",
    "TRANSLATION_TOL_MM",
    "ImageGeometry",
    "find_dicom",
    "header_volume_count",
    "inspect_case",
    "load_case",
    "save_labels",
    "save_probabilities",
]

DEFAULT_MAX_VOXELS = 1024 * 1024 * 2048
TRANSLATION_TOL_MM = 1e-3
LINEAR_RTOL = 1e-4
_DEGENERATE_RTOL = 1e-6  # |det| / prod(voxel sizes) below this: axes (nearly) collinear or zero
_DEFLATE_MAX_RATIO = 1032  # zlib: one 258-byte match per two bits at best
_GZIP_LEVEL = 1  # nibabel's own default: fast, and label maps compress well anyway
_COPY_ROWS = 32  # Y rows per transposing copy while reading: in cache, 1.6-2.4x faster than whole
_SLAB_VOXELS = 1 << 22  # voxels per read or write: bounds temporaries to ~32 MB
_MM_PER_UNIT = {"meter": 1000.0, "micron": 1e-3}
_DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
_DICOM_LOOK = 16  # entries looked at per folder when searching for DICOM: -i may be huge
CONVERT_DICOM = "convert the series to NIfTI first, e.g. dcm2niix -z y -o OUT_DIR SERIES_DIR"
_CONVERT_ITK = "convert it to .nii.gz first, e.g. with SimpleITK or 3D Slicer"
_READ_ERRORS = (OSError, EOFError, zlib.error, ValueError, HeaderDataError, ImageFileError)
# Header fields that place voxels in space; copied verbatim so outputs land on the input grid.
_SPATIAL_FIELDS = (
    "qform_code", "sform_code", "quatern_b", "quatern_c", "quatern_d",
    "qoffset_x", "qoffset_y", "qoffset_z", "srow_x", "srow_y", "srow_z", "xyzt_units",
)  # fmt: skip


@dataclass(frozen=True, eq=False)
class ImageGeometry:
    """The input's voxel grid: file-order ``shape`` (X, Y, Z), voxel-to-world ``affine`` (4x4
    float64, mm, read-only), a copy of the first input's NIfTI ``header`` (the source of the
    qform/sform fields outputs copy), the resolved input ``sources`` that outputs must not
    overwrite, and the file axes whose voxel size the header leaves 0 (read as 1 mm)."""

    shape: tuple[int, int, int]
    affine: np.ndarray
    header: nib.Nifti1Header
    sources: tuple[Path, ...] = ()
    zero_size_axes: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        affine = np.array(self.affine, dtype=np.float64)
        affine.setflags(write=False)
        object.__setattr__(self, "affine", affine)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along the file's X, Y, Z axes (norms of the affine's columns)."""
        return tuple(float(s) for s in voxel_sizes(self.affine))  # type: ignore[return-value]


def affine_mm(img: nib.Nifti1Pair) -> np.ndarray:
    """The voxel-to-world affine in mm. nibabel's affine ignores the header's spatial unit
    (``xyzt_units``); ITK, and so nnU-Net, convert metres and microns, and so does this."""
    unit = img.header.get_xyzt_units()[0]
    affine = np.array(img.affine, dtype=np.float64)
    affine[:3] *= _MM_PER_UNIT.get(unit, 1.0)  # "mm" and "unknown" are taken as mm
    return affine


def inspect_case(
    paths: Sequence[Path],
    n_modalities: int,
    *,
    max_voxels: int = DEFAULT_MAX_VOXELS,
    modality_names: Sequence[str] | None = None,
) -> tuple[int, int, int]:
    """Validate a case from its headers alone and return its spatial shape (X, Y, Z).

    Raises every error ``load_case`` raises short of reading voxel data, in milliseconds, so a
    caller can refuse bad input before slower work such as compiling the model.
    """
    return _inspect(paths, n_modalities, max_voxels, modality_names)[1][0]


def load_case(
    paths: Sequence[Path],
    n_modalities: int,
    *,
    max_voxels: int = DEFAULT_MAX_VOXELS,
    modality_names: Sequence[str] | None = None,
) -> tuple[np.ndarray, ImageGeometry]:
    """Load one case as float32 ``(C, X, Y, Z)`` in file voxel order, plus its geometry.
    The array's memory is in canonical (closest RAS+) order, so reorienting it copies nothing.

    ``paths`` is one file per modality in the model's order, or a single 4D file with modalities
    on the last axis (when ``n_modalities > 1``). ``max_voxels`` bounds X*Y*Z and is checked from
    the headers before any voxel data is read.
    """
    paths = tuple(Path(p) for p in paths)
    images, spatial = _inspect(paths, n_modalities, max_voxels, modality_names)
    stacked = len(paths) == 1 and n_modalities > 1
    affine = affine_mm(images[0])
    data = empty_in_canonical_layout(n_modalities, spatial[0], affine)  # to_canonical: no copy
    for c in range(n_modalities):
        img, p = (images[0], paths[0]) if stacked else (images[c], paths[c])
        _read_volume(img, c if stacked else None, p, data[c])
    geometry = ImageGeometry(
        shape=spatial[0],
        affine=affine,
        header=images[0].header.copy(),
        sources=tuple(p.resolve() for p in paths),
        zero_size_axes=_zero_size_axes(images[0]),
    )
    return data, geometry


def _zero_size_axes(img: nib.Nifti1Pair) -> tuple[int, ...]:
    """File axes whose stored voxel size (pixdim) is 0 where no sform gives the grid: nibabel
    and ITK read them as 1 mm, and nibabel repairs the header on load, so only the stored
    bytes tell."""
    if int(img.header["sform_code"]):
        return ()
    holder = img.file_map.get("header") or img.file_map["image"]  # .hdr of a pair, else .nii
    with _quiet_nibabel(), ImageOpener(holder.filename) as f:
        stored = type(img.header).from_fileobj(f, check=False)
    return tuple(i for i in range(3) if stored["pixdim"][i + 1] == 0)


def _inspect(
    paths: Sequence[Path],
    n_modalities: int,
    max_voxels: int,
    modality_names: Sequence[str] | None,
) -> tuple[list[nib.Nifti1Pair], list[tuple[int, int, int]]]:
    """Open every file header-only and check it; returns the images and their spatial shapes."""
    if n_modalities < 1:
        raise ValueError(f"n_modalities must be at least 1, got {n_modalities}")
    paths = tuple(Path(p) for p in paths)
    wanted = _describe_modalities(n_modalities, modality_names)
    stacked = len(paths) == 1 and n_modalities > 1
    if not stacked and len(paths) != n_modalities:
        raise InputError(
            f"got {len(paths)} input file(s) but the model needs {wanted}: pass one file per "
            "modality in that order, or one 4D NIfTI with the modalities on its last axis"
        )
    images = [_open(p) for p in paths]
    spatial = [_check_header(img, p, max_voxels) for img, p in zip(images, paths, strict=True)]
    counts = [_count_volumes(img, p) for img, p in zip(images, paths, strict=True)]
    if stacked and counts[0] != n_modalities:
        raise InputError(
            f"{paths[0]} holds {counts[0]} volume(s) but the model needs {wanted}: pass a 4D "
            "NIfTI with one volume per modality on its last axis, or one file per modality"
        )
    if not stacked and max(counts) > 1:
        k = int(np.argmax(counts))
        raise InputError(
            f"{paths[k]} is 4D with {counts[k]} volumes but each file must be one 3D volume "
            f"({wanted}); split it, or pass it as the only input"
        )
    _check_same_grid(images, spatial, paths)
    for img, p in zip(images, paths, strict=True):
        _check_data_fits(img, p)
    _check_distinct(paths, modality_names)  # after each file's own checks: those say more
    return images, spatial


def _check_distinct(paths: Sequence[Path], names: Sequence[str] | None) -> None:
    """One file given for two modalities is a slip (e.g. CT twice); the model would run on it."""
    seen: dict[Path, int] = {}
    for i, p in enumerate(paths):
        first = seen.setdefault(p.resolve(), i)
        if first != i:
            a, b = (names[first], names[i]) if names else (f"input {first}", f"input {i}")
            raise InputError(
                f"{p} is given for both {a} and {b}; pass one file per modality, in the "
                "model's order (see `veloxseg info`)"
            )


def _describe_modalities(n: int, names: Sequence[str] | None) -> str:
    listed = f" ({', '.join(names)})" if names else ""
    return f"{n} modalit{'y' if n == 1 else 'ies'}{listed}"


@contextmanager
def _quiet_nibabel() -> Iterator[None]:
    """Mute the header oddities nibabel repairs or refuses while loading (an odd vox_offset, a
    zero pixdim): it logs them to stderr, but what matters is checked here and reported in one
    line. Its documented knob is the level of ``imageglobals.logger``."""
    logger = imageglobals.logger
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


def _open(path: Path) -> nib.Nifti1Pair:
    """Read the header only (nibabel proxies the voxel data) and insist on NIfTI."""
    if path.is_symlink() and not path.exists():
        raise InputError(
            f"input {path} is a link to {os.readlink(path)}, which does not exist; fix the link"
        )
    if not path.exists():
        raise InputError(f"input file {path} does not exist; check the path")
    if path.is_dir():
        dicom = find_dicom(path)
        if dicom is not None:
            raise InputError(f"input {path} is a folder of DICOM files ({dicom}); {CONVERT_DICOM}")
        raise InputError(
            f"input {path} is a folder, not a file; pass a folder of cases as the only -i, or "
            "one .nii or .nii.gz file per modality"
        )
    if not path.is_file():
        raise InputError(f"input {path} is not a file; pass a .nii or .nii.gz image")
    try:
        with _quiet_nibabel():
            img = nib.load(path)
    except _READ_ERRORS as e:
        known = _what_else(path)
        if known is None and isinstance(e, HeaderDataError):
            raise InputError(
                f"{path} has a corrupt NIfTI header ({one_line(e)}); save it again from the "
                "tool that made it"
            ) from e
        what, fix = known or (one_line(e), "pass a .nii or .nii.gz file")
        raise InputError(f"{path} is not a readable NIfTI image ({what}); {fix}") from e
    if not isinstance(img, nib.Nifti1Pair):  # Nifti1Image, Nifti2Image and .hdr/.img pairs
        raise InputError(
            f"{path} is a {type(img).__name__}, not NIfTI; convert it to .nii.gz first"
        )
    return img


def _what_else(path: Path) -> tuple[str, str] | None:
    """What a file that nibabel cannot read is, from its first bytes, and the fix: the formats
    and naming slips that users hand to NIfTI tools."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return None
    name = path.name
    gz_name, gzipped = name.lower().endswith(".gz"), head.startswith(b"\x1f\x8b")
    sizeof_hdr = {int.from_bytes(head[:4], order) for order in ("little", "big")}
    if not head:
        return "the file is empty", "re-export or re-download it"
    if _is_dicom(path):
        return "it is a DICOM file", CONVERT_DICOM
    if head.startswith(b"PK\x03\x04"):
        return "it is a zip archive", "unzip it and pass the images inside"
    if head.startswith(b"NRRD"):
        return "it is an NRRD image", _CONVERT_ITK
    if head.startswith((b"ObjectType", b"NDims")):
        return "it is a MetaImage", _CONVERT_ITK
    if gz_name and not gzipped and sizeof_hdr & {348, 540}:
        return "it is not gzip-compressed despite its name", f"rename it to {name[:-3]}"
    if gzipped and not gz_name:
        return "it is gzip-compressed despite its name", f"rename it to {name}.gz"
    return None


def header_volume_count(path: Path) -> int | None:
    """How many volumes a NIfTI file holds, as :func:`load_case` counts them, from its header
    alone; None where loading would refuse the file anyway."""
    try:
        return _count_volumes(_open(path), path)
    except InputError:
        return None


def find_dicom(folder: Path, depth: int = 2) -> Path | None:
    """A DICOM file in ``folder`` or its subfolders down to ``depth`` (a study of series, a
    patient of studies), else None; looks at the first few entries of each folder only."""
    try:
        entries = sorted(itertools.islice(folder.iterdir(), _DICOM_LOOK))
    except OSError:
        return None
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_file() and _is_dicom(entry):
            return entry
        if depth and entry.is_dir() and (found := find_dicom(entry, depth - 1)):
            return found
    return None


def _is_dicom(path: Path) -> bool:
    """A DICOM file by its suffix, or by the ``DICM`` tag after its 128-byte preamble."""
    if path.suffix.lower() in _DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return False


def _check_header(img: nib.Nifti1Pair, path: Path, max_voxels: int) -> tuple[int, int, int]:
    """Validate dimensionality, size, voxel type and affine; return the spatial shape."""
    shape = img.shape
    if len(shape) < 3 or min(shape[:3]) < 2:
        raise InputError(
            f"{path} has shape {shape}, a 2D image or empty; the model needs a 3D volume"
        )
    spatial = (int(shape[0]), int(shape[1]), int(shape[2]))
    n_voxels = math.prod(spatial)
    if n_voxels > max_voxels:
        raise InputError(
            f"{path} has {n_voxels:,} voxels {spatial}, more than the limit of {max_voxels:,}; "
            "crop or downsample it first (or raise --max-voxels)"
        )
    dtype = img.get_data_dtype()
    if dtype.kind not in "biuf":
        raise InputError(f"{path} stores {dtype} voxels; convert it to a scalar numeric type")
    affine = img.affine
    det = np.linalg.det(affine[:3, :3]) if np.isfinite(affine).all() else np.nan
    if not abs(det) > _DEGENERATE_RTOL * np.prod(voxel_sizes(affine)):
        raise InputError(
            f"{path} has a degenerate voxel-to-world affine (NaN or determinant ≈ 0); "
            "fix the qform/sform in its header"
        )
    return spatial


def _check_data_fits(img: nib.Nifti1Pair, path: Path) -> None:
    """Refuse a header declaring more voxel bytes than the file can hold, from its size alone:
    nibabel would allocate the declared size first and only then find the data short. A gzip
    member inflates at most ``_DEFLATE_MAX_RATIO`` times; other compressions are not bounded
    here (the voxel limit still is)."""
    image_file = Path(img.file_map["image"].filename)
    dtype = img.get_data_dtype()
    needed = int(img.dataobj.offset) + math.prod(img.shape) * dtype.itemsize
    try:
        size = image_file.stat().st_size
    except OSError as e:
        where = "" if image_file == path else f" in {image_file}"  # the .img of a .hdr
        raise InputError(f"cannot read the voxel data of {path}{where} ({e.strerror})") from e
    suffix = image_file.suffix.lower()
    if suffix in (".bz2", ".zst"):
        return
    capacity = size * _DEFLATE_MAX_RATIO if suffix == ".gz" else size
    if needed > capacity:
        at_most = "at most " if suffix == ".gz" else ""
        raise InputError(
            f"{path} declares {needed:,} bytes of {dtype} voxels {img.shape} but the file holds "
            f"{at_most}{capacity:,}; the file is truncated or corrupt, re-export or re-download it"
        )


def _count_volumes(img: nib.Nifti1Pair, path: Path) -> int:
    """Volumes along the 4th axis; trailing singleton axes are ignored, a 5th axis is refused."""
    extra = list(img.shape[3:])
    while extra and extra[-1] == 1:
        extra.pop()
    if len(extra) > 1:
        hint = ""
        if len(extra) == 2 and extra[0] == 1:  # (X, Y, Z, 1, C): how ITK writes vector images
            hint = f": save it as {(*img.shape[:3], extra[1])}, without the 4th axis of size 1"
        raise InputError(
            f"{path} is {len(img.shape)}D with shape {img.shape}; expected a 3D volume or a 4D "
            f"stack of modalities on the last axis{hint}"
        )
    return int(extra[0]) if extra else 1


def _check_same_grid(
    images: Sequence[nib.Nifti1Pair], spatial: Sequence[tuple[int, int, int]], paths: Sequence[Path]
) -> None:
    """All modalities must share shape and (within tolerance) affine: the model sees them
    voxel by voxel, so a mismatch would silently misalign them."""
    ref = affine_mm(images[0])
    tol_linear = LINEAR_RTOL * voxel_sizes(ref)[np.newaxis, :]
    for img, shape, p in zip(images[1:], spatial[1:], paths[1:], strict=True):
        if shape != spatial[0]:
            raise InputError(
                f"{p} has shape {shape} but {paths[0]} has {spatial[0]}; all modalities must "
                "share one voxel grid, so resample them onto one grid first"
            )
        delta = np.abs(affine_mm(img) - ref)
        if (delta[:3, :3] > tol_linear).any() or (delta[:3, 3] > TRANSLATION_TOL_MM).any():
            raise InputError(
                f"{p} is not on the same voxel grid as {paths[0]} (affines differ by up to "
                f"{delta[:3].max():.4g} mm); resample it onto {paths[0]}'s grid first"
            )


def _read_volume(img: nib.Nifti1Pair, index: int | None, path: Path, out: np.ndarray) -> None:
    """Read one scaled volume into ``out`` (X, Y, Z) float32; refuse truncation, a damaged
    gzip stream and NaN/Inf.

    Scaling or the cast to float32 may overflow to Inf; that is refused below like stored Inf,
    so numpy's overflow warning would only add a stray line to the one-line error."""
    proxy = img.dataobj  # its offset, dtype and scaling as nibabel resolved them
    dtype, slope, inter = proxy.dtype, proxy.slope, proxy.inter
    nx, ny, nz = out.shape
    offset = proxy.offset + (index or 0) * nx * ny * nz * dtype.itemsize
    step = max(1, _SLAB_VOXELS // max(1, nx * ny))
    last = index is None or index == _count_volumes(img, path) - 1
    try:
        with np.errstate(over="ignore", invalid="ignore"), ImageOpener(img.get_filename()) as f:
            # Z slabs in file order from one stream: a whole-volume scaled read would first
            # build a float copy of the volume (float64 for many types) beside `out`.
            for z in range(0, nz, step):
                k = min(step, nz - z)
                block = array_from_file(
                    (nx, ny, k), dtype, f, offset + z * nx * ny * dtype.itemsize, mmap=False
                )
                scaled = apply_read_scaling(block, slope, inter)
                for y in range(0, ny, _COPY_ROWS):  # the file's x-fastest slab into our
                    rows = slice(y, y + _COPY_ROWS)  # z-fastest array, a few rows at a time
                    out[:, rows, z : z + k] = scaled[:, rows]
            if last:
                _read_to_end(f)
    except _READ_ERRORS as e:
        raise InputError(
            f"could not read the voxel data of {path} ({one_line(e)}); the file is truncated "
            "or corrupt, re-export or re-download it"
        ) from e
    n_bad = sum(s.size - int(np.count_nonzero(np.isfinite(s))) for s in out)  # no volume mask
    if n_bad:
        raise InputError(
            f"{path} has {n_bad:,} NaN/Inf voxel(s){'' if index is None else f' in volume {index}'}"
            " (stored, or past float32 after scl_slope/scl_inter); replace them (e.g. with the "
            "background value) and retry"
        )


def _read_to_end(f: BinaryIO) -> None:
    """Read on to the end, where a gzip stream checks its CRC and length (nibabel stops short);
    bytes after the last gzip member are ignored, as ``gzip -d`` and nibabel ignore them."""
    try:
        f.read()
    except gzip.BadGzipFile as e:
        if not str(e).startswith("Not a gzipped file"):  # trailing bytes, after a good CRC
            raise


def save_labels(labels: np.ndarray, geometry: ImageGeometry, out_path: Path) -> None:
    """Write an integer label map ``(X, Y, Z)`` in file voxel order onto the input's grid.

    Stored as uint8, or uint16 when a label exceeds 255. Refuses to overwrite an input
    (``geometry.sources``).
    """
    if labels.shape != geometry.shape:
        raise ValueError(f"labels have shape {labels.shape}, the input grid is {geometry.shape}")
    if labels.dtype.kind not in "biu":
        raise ValueError(f"labels must be integers, got {labels.dtype}")
    low, high = (int(labels.min()), int(labels.max())) if labels.size else (0, 0)
    if low < 0 or high > np.iinfo(np.uint16).max:
        raise ValueError(f"labels must lie in [0, 65535], got [{low}, {high}]")
    dtype = np.uint8 if high <= np.iinfo(np.uint8).max else np.uint16
    _write_nifti(labels.astype(dtype, copy=False), geometry, Path(out_path))


def save_probabilities(probs: np.ndarray, geometry: ImageGeometry, out_path: Path) -> None:
    """Write per-class probabilities ``(K, X, Y, Z)`` (file voxel order) as a 4D float32 NIfTI
    with classes on the last axis, the same convention as a 4D multi-modality input."""
    if probs.ndim != 4 or probs.shape[1:] != geometry.shape:
        raise ValueError(f"probabilities have shape {probs.shape}, want (K, *{geometry.shape})")
    data = np.moveaxis(probs.astype(np.float32, copy=False), 0, -1)
    _write_nifti(data, geometry, Path(out_path))


def _write_nifti(data: np.ndarray, geometry: ImageGeometry, out_path: Path) -> None:
    """Build a header carrying the input's spatial fields and write ``data`` atomically."""
    name = out_path.name
    if not name.lower().endswith((".nii", ".nii.gz")):
        raise InputError(f"output {out_path} must end in .nii.gz or .nii")
    if (source := replaced_input(out_path, geometry.sources)) is not None:
        raise InputError(f"output {out_path} would overwrite input {source}; choose another path")
    is_nifti2 = isinstance(geometry.header, nib.Nifti2Header)
    header = nib.Nifti2Header() if is_nifti2 else nib.Nifti1Header()
    header.set_data_shape(data.shape)
    header.set_data_dtype(data.dtype)
    pixdim = header["pixdim"]
    pixdim[:4] = geometry.header["pixdim"][:4]
    header["pixdim"] = pixdim
    for field in _SPATIAL_FIELDS:
        header[field] = geometry.header[field]
    image_class = nib.Nifti2Image if is_nifti2 else nib.Nifti1Image
    image = image_class(data, None, header=header)  # None: keep the copied fields verbatim
    with atomic_writer(out_path) as f:
        if name.lower().endswith(".gz"):  # no name or time in the gzip header: same bytes per run
            with gzip.GzipFile("", "wb", _GZIP_LEVEL, fileobj=f, mtime=0) as gz:
                _write_image(image, gz)
        else:
            _write_image(image, f)


def _write_image(image: nib.Nifti1Pair, stream: BinaryIO) -> None:
    """The bytes of nibabel's ``to_stream``, with the voxels written in Z slabs of about
    ``_SLAB_VOXELS``: nibabel writes a 4D array one volume at a time, after a full scan
    for its scaling, so probabilities on a CT grid took two extra float32 volumes (2 GB)."""
    data = np.asanyarray(image.dataobj)
    image.update_header()
    header = image.header
    header.set_slope_inter(1.0, 0.0)  # what nibabel records for data stored unscaled
    header.write_to(stream)
    seek_tell(stream, header.get_data_offset(), write0=True)
    volumes = data if data.ndim == 4 else data[..., None]  # labels (3D) or probabilities (4D)
    nx, ny, nz, _ = volumes.shape
    step = max(1, _SLAB_VOXELS // max(1, nx * ny))
    for volume in np.moveaxis(volumes, 3, 0):
        for z in range(0, nz, step):
            stream.write(volume[:, :, z : z + step].tobytes(order="F"))
