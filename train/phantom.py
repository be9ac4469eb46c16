"""Deterministic whole-body FDG PET/CT phantoms in the AutoPET-II setting.

Why: training, benchmarking and end-to-end tests need paired PET/CT volumes with known lesion masks
and without patient data. The phantom reproduces what makes the task hard rather than anatomy in
detail: lesions of varied size, shape and contrast at the usual sites (lymph nodes, lung, liver,
bone, next to physiological uptake), physiological uptake that is not disease (brain, heart,
kidneys, ureters, bladder, bowel, brown fat, glands) and PET partial-volume blur and noise.

Each case follows one AutoPET-II diagnosis (lymphoma, lung cancer or melanoma) with 2-8 lesions
(a few per cent of seeds have none) of 4-22 mm radius, sometimes a bulky 20-36 mm mass; about a
fifth are low contrast (SUV 2-3). Most cases are skull base to mid-thigh, one in ten includes the
brain.
The plain SUV >= 2.5 baseline of :mod:`veloxseg.train.metrics` reaches a mean Dice of about 0.3.

Arrays are ``(x, y, z)`` = (left to right, posterior to anterior, inferior to superior), RAS+, so
the patient's right is at large ``x``. Anatomy is described in units relative to the body and
scaled to the requested shape, so small test volumes still contain a complete (smaller) body.
Everything is drawn from ``np.random.default_rng(seed)``: the same seed gives bit-identical arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

__all__ = ["DEFAULT_SPACING", "Phantom", "make_phantom", "phantom_affine", "save_phantom_case"]

DEFAULT_SPACING = (2.03642, 2.03642, 3.0)
PET_FWHM_MM = 6.0
_NOMINAL_HALF_WIDTH_MM = 155.0  # torso half-width of an average adult
_DIAPHRAGM_H = 0.535

Shape3 = tuple[int, int, int]
Spacing3 = tuple[float, float, float]
Slices3 = tuple[slice, slice, slice]


@dataclass(frozen=True, eq=False)
class Phantom:
    """One PET/CT case: CT in HU, PET in SUV, binary lesion label, spacing in mm."""

    ct: np.ndarray
    pet: np.ndarray
    label: np.ndarray
    spacing: Spacing3

    @property
    def affine(self) -> np.ndarray:
        """Voxel-to-RAS affine in mm, centred on the volume."""
        return phantom_affine(self.label.shape, self.spacing)


def phantom_affine(shape: tuple[int, ...], spacing: Spacing3) -> np.ndarray:
    """Diagonal RAS+ affine whose origin puts the centre of the volume at world ``(0, 0, 0)``."""
    affine = np.diag([*map(float, spacing), 1.0])
    affine[:3, 3] = [-(n - 1) / 2 * s for n, s in zip(shape[:3], spacing, strict=True)]
    return affine


class _T(IntEnum):
    """Tissue classes of the anatomy map; each gets one HU and one SUV per phantom."""

    AIR = 0
    FAT = 1
    MUSCLE = 2
    VISCERAL_FAT = 3
    MEDIASTINUM = 4
    LUNG = 5
    GAS = 6
    BLOOD = 7
    MYOCARDIUM = 8
    LIVER = 9
    SPLEEN = 10
    STOMACH = 11
    BOWEL = 12
    KIDNEY = 13
    RENAL_PELVIS = 14
    BLADDER = 15
    BRAIN = 16
    CSF = 17
    GLAND = 18
    MARROW = 19
    CORTEX = 20
    DISC = 21


# (HU low, HU high, SUV low, SUV high): each phantom draws uniformly inside these ranges.
_TISSUE_RANGES: dict[_T, tuple[float, float, float, float]] = {
    _T.AIR: (-1000, -1000, 0.0, 0.0),
    _T.FAT: (-115, -85, 0.25, 0.45),
    _T.MUSCLE: (35, 55, 0.6, 0.95),
    _T.VISCERAL_FAT: (-110, -80, 0.3, 0.5),
    _T.MEDIASTINUM: (-40, 30, 0.7, 1.1),
    _T.LUNG: (-880, -780, 0.3, 0.5),
    _T.GAS: (-990, -900, 0.05, 0.15),
    _T.BLOOD: (35, 50, 1.5, 2.1),
    _T.MYOCARDIUM: (40, 55, 2.5, 8.0),
    _T.LIVER: (50, 70, 1.7, 2.2),
    _T.SPLEEN: (40, 55, 1.6, 2.2),
    _T.STOMACH: (30, 45, 1.2, 2.6),
    _T.BOWEL: (20, 45, 1.0, 2.0),
    _T.KIDNEY: (28, 40, 1.6, 2.6),
    _T.RENAL_PELVIS: (5, 15, 6.0, 20.0),
    _T.BLADDER: (0, 15, 6.0, 18.0),
    _T.BRAIN: (30, 40, 6.0, 9.0),
    _T.CSF: (2, 12, 0.3, 0.5),
    _T.GLAND: (30, 50, 2.0, 4.0),
    _T.MARROW: (250, 450, 1.2, 2.0),
    _T.CORTEX: (800, 1300, 0.5, 0.9),
    _T.DISC: (70, 100, 0.6, 0.9),
}

# Torso/neck/head cross-section along the anatomical height h (0 mid-thigh, 1 vertex). Columns:
# h, semi-axis left-right, semi-axis AP, AP centre; in units of the torso half-width.
_BODY = np.array(
    [
        (0.12, 0.95, 0.66, 0.0),
        (0.18, 1.00, 0.66, 0.0),
        (0.28, 0.95, 0.66, 0.0),
        (0.36, 0.92, 0.68, 0.0),
        (0.46, 0.95, 0.70, 0.0),
        (0.56, 1.00, 0.72, 0.0),
        (0.68, 1.05, 0.72, 0.0),
        (0.745, 1.10, 0.62, -0.05),
        (0.775, 0.60, 0.45, -0.15),
        (0.80, 0.38, 0.40, -0.15),
        (0.835, 0.38, 0.42, -0.12),
        (0.86, 0.44, 0.55, -0.05),
        (0.90, 0.47, 0.60, -0.05),
        (0.95, 0.45, 0.58, -0.05),
        (0.985, 0.30, 0.40, -0.05),
        (1.0, 0.08, 0.08, -0.05),
    ]
).T
# Vertebral body along h. Columns: h, AP centre, semi-axis left-right, semi-axis AP (same units).
_SPINE = np.array(
    [
        (0.19, -0.45, 0.22, 0.10),
        (0.26, -0.42, 0.18, 0.10),
        (0.30, -0.30, 0.14, 0.11),
        (0.45, -0.30, 0.14, 0.11),
        (0.60, -0.38, 0.11, 0.10),
        (0.75, -0.30, 0.10, 0.09),
        (0.80, -0.22, 0.08, 0.07),
        (0.86, -0.18, 0.08, 0.07),
    ]
).T


@dataclass(frozen=True)
class _Grid:
    """World coordinates of the voxel centres and the mapping from anatomy units to mm."""

    shape: Shape3
    spacing: Spacing3
    x: np.ndarray  # mm, float32, one entry per index along each axis
    y: np.ndarray
    z: np.ndarray
    h: np.ndarray  # anatomical height of each z slice
    unit: float  # mm per in-plane anatomy unit (torso half-width)
    unit_h: float  # mm per unit of anatomical height
    y_body: float  # mm, AP position of the torso centre
    h_bot: float
    size_scale: float  # sizes in mm are for an average adult and multiplied by this
    stretch: tuple[float, float]  # habitus: body width and depth factors
    fat_mm: float  # subcutaneous fat over the torso

    def world(self, u: float, v: float, h: float) -> tuple[float, float, float]:
        """Anatomy coordinates (right, anterior, height) to world mm."""
        z0 = -self.shape[2] * self.spacing[2] / 2
        return u * self.unit, self.y_body + v * self.unit, z0 + (h - self.h_bot) * self.unit_h

    def radii(self, ru: float, rv: float, rh: float) -> tuple[float, float, float]:
        """Anatomy radii to mm."""
        return ru * self.unit, rv * self.unit, rh * self.unit_h


def _make_grid(shape: Shape3, spacing: Spacing3, rng: np.random.Generator) -> _Grid:
    axes = [
        ((np.arange(n) - (n - 1) / 2) * s).astype(np.float32)
        for n, s in zip(shape, spacing, strict=True)
    ]
    h_bot = float(rng.uniform(0.0, 0.05))
    # Protocols: mostly skull base to mid-thigh (brain at most partly in view), some whole-body.
    h_top = float(rng.uniform(0.97, 1.0) if rng.uniform() < 0.1 else rng.uniform(0.8, 0.86))
    unit_h = shape[2] * spacing[2] / (h_top - h_bot)
    half_x, half_y = shape[0] * spacing[0] / 2, shape[1] * spacing[1] / 2
    habitus = float(rng.uniform(0.88, 1.1))
    # The widest cross-section is 1.1 units; the body sits slightly posterior on the table.
    unit = min(_NOMINAL_HALF_WIDTH_MM * habitus, 0.92 * half_x / 1.1, 0.92 * half_y / 0.85)
    h = h_bot + (axes[2] - axes[2][0] + spacing[2] / 2) / unit_h
    size_scale = min(1.0, unit / _NOMINAL_HALF_WIDTH_MM)
    in_plane = max(spacing[0], spacing[1])  # thin layers keep at least this much in small volumes
    return _Grid(
        shape=shape,
        spacing=spacing,
        x=axes[0],
        y=axes[1],
        z=axes[2],
        h=h.astype(np.float64),
        unit=unit,
        unit_h=unit_h,
        y_body=-0.1 * unit,
        h_bot=h_bot,
        size_scale=size_scale,
        stretch=(float(rng.uniform(0.9, 1.08)), float(rng.uniform(0.88, 1.12))),
        fat_mm=max(float(rng.uniform(6.0, 26.0)) * size_scale, 1.5 * in_plane),
    )


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    return (q * np.sign(np.diag(r))).astype(np.float32)


def _ellipsoid(
    grid: _Grid,
    center: tuple[float, float, float],
    radii: tuple[float, float, float],
    rotation: np.ndarray | None = None,
    lobes: np.ndarray | None = None,
) -> tuple[Slices3, np.ndarray] | None:
    """Bounding box and normalised squared radius (``<= 1`` inside) of an ellipsoid in mm.

    ``lobes`` rows ``(amplitude, wx, wy, wz, phase)`` modulate the radius along directions so
    lesions become lobulated instead of perfect ellipsoids. Works on the bounding box only, which
    keeps painting cheap even for large volumes.
    """
    grow = 1.0 + (float(np.abs(lobes[:, 0]).sum()) if lobes is not None else 0.0)
    reach = [max(radii) * grow] * 3 if rotation is not None else [r * grow for r in radii]
    slices = []
    coords = []
    for axis, (c, r) in enumerate(zip(center, reach, strict=True)):
        world = (grid.x, grid.y, grid.z)[axis]
        lo = int(np.searchsorted(world, c - r, side="left"))
        hi = int(np.searchsorted(world, c + r, side="right"))
        if hi <= lo:
            return None
        slices.append(slice(lo, hi))
        view = [1, 1, 1]
        view[axis] = hi - lo
        coords.append((world[lo:hi] - np.float32(c)).reshape(view))
    if rotation is not None:
        coords = [sum(rotation[i, j] * coords[j] for j in range(3)) for i in range(3)]
    scaled = [coord / np.float32(r) for coord, r in zip(coords, radii, strict=True)]
    d2 = scaled[0] ** 2 + scaled[1] ** 2 + scaled[2] ** 2
    if lobes is not None:
        norm = np.sqrt(np.maximum(d2, np.float32(1e-12)))
        modulation = np.ones_like(d2)
        for amp, wx, wy, wz, phase in lobes:
            cosine = (wx * scaled[0] + wy * scaled[1] + wz * scaled[2]) / norm
            modulation += np.float32(amp) * np.cos(np.float32(2.5) * cosine + np.float32(phase))
        d2 = d2 / modulation**2
    return (slices[0], slices[1], slices[2]), d2


def _paint(
    tissue: np.ndarray,
    found: tuple[Slices3, np.ndarray] | None,
    value: _T,
    where: tuple[_T, ...] | None = None,
    inner: float = 0.0,
) -> None:
    """Set tissue inside an ellipsoid (optionally only over ``where`` tissues, or a shell)."""
    if found is None:
        return
    sl, d2 = found
    mask = d2 <= 1.0
    if inner > 0.0:
        mask &= d2 > inner * inner
    region = tissue[sl]
    mask &= np.isin(region, where) if where is not None else region != _T.AIR
    region[mask] = value


def _ellipse_2d(grid: _Grid, cx: float, cy: float, ax: float, ay: float) -> np.ndarray:
    """Boolean (x, y) mask of an axis-aligned ellipse on one slice, sizes in mm."""
    dx = ((grid.x - np.float32(cx)) / np.float32(max(ax, 1e-3))) ** 2
    dy = ((grid.y - np.float32(cy)) / np.float32(max(ay, 1e-3))) ** 2
    return (dx[:, None] + dy[None, :]) <= 1.0


def _body_section(grid: _Grid, h: float) -> tuple[float, float, float]:
    """Torso/neck/head semi-axes and AP centre in mm at anatomical height ``h``."""
    a, b, c = (float(np.interp(h, _BODY[0], column)) * grid.unit for column in _BODY[1:])
    return a * grid.stretch[0], b * grid.stretch[1], grid.y_body + c


def _paint_cross_sections(tissue: np.ndarray, grid: _Grid, rng: np.random.Generator) -> None:
    """Body outline, fat, muscle wall, body cavities, spine and ribs, slice by slice."""
    u = grid.unit
    stretch_a, stretch_b = grid.stretch
    fat_mm = grid.fat_mm
    in_plane = max(grid.spacing[0], grid.spacing[1])
    wall_mm = max(rng.uniform(10.0, 18.0) * grid.size_scale, 1.5 * in_plane)
    rib_mm = max(9.0 * grid.size_scale, 1.5 * in_plane)
    rib_period, rib_phase = rng.uniform(0.022, 0.028), rng.uniform(0.0, 1.0)
    disc_period, disc_phase = rng.uniform(0.024, 0.03), rng.uniform(0.0, 1.0)
    for k, h in enumerate(grid.h):
        sl = tissue[:, :, k]
        if h <= 0.17:  # thighs
            ra = np.interp(h, (0.0, 0.17), (0.32, 0.42)) * stretch_a * u
            rb = np.interp(h, (0.0, 0.17), (0.40, 0.50)) * stretch_b * u
            for side in (-1.0, 1.0):
                cx, cy = side * 0.5 * stretch_a * u, grid.y_body + 0.03 * u
                sl[_ellipse_2d(grid, cx, cy, ra, rb)] = _T.FAT
                sl[_ellipse_2d(grid, cx, cy, ra - fat_mm, rb - fat_mm)] = _T.MUSCLE
                femur = _ellipse_2d(grid, cx - side * 0.05 * u, cy - 0.05 * u, 0.07 * u, 0.07 * u)
                sl[femur] = _T.CORTEX
                sl[_ellipse_2d(grid, cx - side * 0.05 * u, cy - 0.05 * u, 0.04 * u, 0.04 * u)] = (
                    _T.MARROW
                )
        if h < _BODY[0, 0]:
            continue
        a, b, cy = _body_section(grid, h)
        fat = fat_mm * np.interp(h, (0.0, 0.74, 0.8, 1.0), (1.0, 1.0, 0.4, 0.25))
        sl[_ellipse_2d(grid, 0.0, cy, a, b)] = _T.FAT
        sl[_ellipse_2d(grid, 0.0, cy, a - fat, b - fat)] = _T.MUSCLE
        if 0.16 <= h <= 0.755:
            cav_a, cav_b = a - fat - wall_mm, (b - fat - wall_mm) * 0.86
            cav_y = cy + 0.12 * (b - fat)
            cavity = _ellipse_2d(grid, 0.0, cav_y, cav_a, cav_b)
            sl[cavity] = _T.MEDIASTINUM if h >= _DIAPHRAGM_H else _T.VISCERAL_FAT
            if 0.5 <= h <= 0.745 and ((h / rib_period + rib_phase) % 1.0) < 0.38:
                ring = _ellipse_2d(grid, 0.0, cav_y, cav_a + rib_mm, cav_b + rib_mm) & ~cavity
                anterior = (grid.y[None, :] - np.float32(cav_y)) > np.abs(grid.x[:, None]) * 1.2
                sl[ring & ~anterior] = _T.CORTEX
        if 0.19 <= h <= 0.86:
            sv, sa, sb = (float(np.interp(h, _SPINE[0], column)) * u for column in _SPINE[1:])
            sv += grid.y_body
            canal_y = sv - sb - 0.05 * u
            arch = _ellipse_2d(grid, 0.0, canal_y, 0.075 * u, 0.06 * u)
            arch |= _ellipse_2d(grid, 0.0, canal_y - 0.09 * u, 0.025 * u, 0.07 * u)
            sl[arch] = _T.CORTEX
            sl[_ellipse_2d(grid, 0.0, canal_y, 0.04 * u, 0.035 * u)] = _T.CSF
            if h > 0.27 and ((h / disc_period + disc_phase) % 1.0) < 0.2:
                sl[_ellipse_2d(grid, 0.0, sv, sa, sb)] = _T.DISC
            else:
                sl[_ellipse_2d(grid, 0.0, sv, sa, sb)] = _T.CORTEX
                sl[_ellipse_2d(grid, 0.0, sv, sa - 2.0, sb - 2.0)] = _T.MARROW


@dataclass(frozen=True)
class _Organ:
    """Where an organ was placed, kept to seed lesions and hot spots inside or next to it."""

    center: tuple[float, float, float]
    radii: tuple[float, float, float]


def _paint_organs(
    tissue: np.ndarray, grid: _Grid, rng: np.random.Generator
) -> dict[str, list[_Organ]]:
    """Organs as jittered ellipsoids; returns their placement for lesion sampling."""
    organs: dict[str, list[_Organ]] = {}

    def place(name: str, uvh: tuple[float, float, float], r: tuple[float, float, float]) -> _Organ:
        jitter = rng.uniform(-1.0, 1.0, 3) * np.array([0.03, 0.03, 0.01])
        scale = rng.uniform(0.88, 1.12, 3)
        center = grid.world(*(np.array(uvh) + jitter))
        radii = grid.radii(*(np.array(r) * scale))
        organ = _Organ(center, radii)
        organs.setdefault(name, []).append(organ)
        return organ

    def ellipsoid(
        organ: _Organ, rotation: np.ndarray | None = None
    ) -> tuple[Slices3, np.ndarray] | None:
        return _ellipsoid(grid, organ.center, organ.radii, rotation)

    thorax = (_T.MEDIASTINUM,)
    abdomen = (_T.VISCERAL_FAT,)
    cavity = (_T.MEDIASTINUM, _T.VISCERAL_FAT, _T.LUNG)

    for side in (-1.0, 1.0):
        lung = place("lung", (side * 0.46, 0.02, 0.645), (0.4, 0.62, 0.125))
        _paint(tissue, ellipsoid(lung), _T.LUNG, where=thorax)
    trachea = place("trachea", (0.0, 0.02, 0.75), (0.06, 0.06, 0.08))
    _paint(tissue, ellipsoid(trachea), _T.GAS, where=(*thorax, _T.MUSCLE, _T.LUNG))
    fat = place("mediastinal_fat", (0.0, 0.3, 0.64), (0.18, 0.15, 0.05))
    _paint(tissue, ellipsoid(fat), _T.VISCERAL_FAT, where=thorax)
    heart = place("heart", (-0.12, 0.14, 0.6), (0.3, 0.26, 0.058))
    _paint(tissue, ellipsoid(heart), _T.BLOOD, where=(*thorax, _T.LUNG, _T.VISCERAL_FAT))
    lv = _Organ(grid.world(-0.22, 0.12, 0.595), grid.radii(0.18, 0.16, 0.042))
    organs["left_ventricle"] = [lv]
    _paint(tissue, ellipsoid(lv), _T.MYOCARDIUM, where=(_T.BLOOD,), inner=0.62)
    aorta = place("aorta", (-0.07, -0.14, 0.47), (0.065, 0.065, 0.17))
    _paint(tissue, ellipsoid(aorta), _T.BLOOD, where=(*cavity, _T.MUSCLE))

    liver = place("liver", (0.38, 0.05, 0.5), (0.55, 0.5, 0.075))
    _paint(tissue, ellipsoid(liver), _T.LIVER, where=cavity)
    spleen = place("spleen", (-0.6, -0.2, 0.49), (0.16, 0.22, 0.05))
    _paint(tissue, ellipsoid(spleen), _T.SPLEEN, where=cavity)
    stomach = place("stomach", (-0.32, 0.25, 0.5), (0.24, 0.2, 0.045))
    _paint(tissue, ellipsoid(stomach), _T.STOMACH, where=cavity)
    bubble = _Organ(
        (stomach.center[0], stomach.center[1] + 0.5 * stomach.radii[1], stomach.center[2]),
        tuple(0.45 * r for r in stomach.radii),
    )
    _paint(tissue, ellipsoid(bubble), _T.GAS, where=(_T.STOMACH,))
    for side, h in ((1.0, 0.405), (-1.0, 0.425)):
        kidney = place("kidney", (side * 0.42, -0.36, h), (0.14, 0.17, 0.05))
        _paint(tissue, ellipsoid(kidney), _T.KIDNEY, where=(*abdomen, _T.MUSCLE))
        pelvis = _Organ(
            (kidney.center[0] - side * 0.3 * kidney.radii[0], kidney.center[1], kidney.center[2]),
            tuple(0.35 * r for r in kidney.radii),
        )
        organs.setdefault("renal_pelvis", []).append(pelvis)
        _paint(tissue, ellipsoid(pelvis), _T.RENAL_PELVIS, where=(_T.KIDNEY,))
    fill = rng.uniform(0.45, 1.0)
    bladder = place("bladder", (0.0, 0.15, 0.205), (0.22 * fill, 0.2 * fill, 0.042 * fill))
    _paint(tissue, ellipsoid(bladder), _T.BLADDER, where=(*abdomen, _T.MUSCLE))

    for _ in range(int(rng.integers(25, 40))):
        u, v, h = rng.uniform(-0.7, 0.7), rng.uniform(-0.2, 0.55), rng.uniform(0.22, 0.47)
        loop = place("bowel", (u, v, h), (rng.uniform(0.1, 0.16),) * 2 + (0.025,))
        _paint(tissue, ellipsoid(loop, _random_rotation(rng)), _T.BOWEL, where=abdomen)
        if rng.uniform() < 0.4:
            gas = _Organ(loop.center, tuple(0.45 * r for r in loop.radii))
            _paint(tissue, ellipsoid(gas), _T.GAS, where=(_T.BOWEL,))

    skull = place("skull", (0.0, 0.0, 0.925), (0.42, 0.54, 0.072))
    _paint(tissue, ellipsoid(skull), _T.CORTEX, where=(_T.MUSCLE,))
    brain = _Organ(skull.center, tuple(r - 6.0 * grid.size_scale for r in skull.radii))
    organs["brain"] = [brain]
    _paint(tissue, ellipsoid(brain), _T.BRAIN, where=(_T.CORTEX,))
    for side in (-1.0, 1.0):
        gland = place("gland", (side * 0.3, -0.05, 0.85), (0.09, 0.12, 0.018))
        _paint(tissue, ellipsoid(gland), _T.GLAND, where=(_T.MUSCLE, _T.FAT))
    tonsils = place("gland", (0.0, 0.1, 0.83), (0.12, 0.07, 0.012))
    _paint(tissue, ellipsoid(tonsils), _T.GLAND, where=(_T.MUSCLE,))

    for side in (-1.0, 1.0):
        rotation = np.array(
            [
                [np.cos(0.6), side * np.sin(0.6), 0.0],
                [-side * np.sin(0.6), np.cos(0.6), 0.0],
                [0.0, 0.0, 1.0],
            ],
            dtype=np.float32,
        )
        ilium = place("ilium", (side * 0.5, -0.28, 0.26), (0.3, 0.08, 0.045))
        _paint(tissue, ellipsoid(ilium, rotation), _T.CORTEX, where=(*abdomen, _T.MUSCLE))
        core = _Organ(ilium.center, (ilium.radii[0] * 0.9, ilium.radii[1] * 0.5, ilium.radii[2]))
        _paint(tissue, ellipsoid(core, rotation), _T.MARROW, where=(_T.CORTEX,))
        head = place("femoral_head", (side * 0.42, -0.02, 0.165), (0.09, 0.09, 0.03))
        _paint(tissue, ellipsoid(head), _T.CORTEX)
        core = _Organ(head.center, tuple(0.75 * r for r in head.radii))
        _paint(tissue, ellipsoid(core), _T.MARROW, where=(_T.CORTEX,))
    return organs


# Lymph node stations (right, anterior, height) in anatomy units; mirrored left/right.
_NODE_STATIONS = (
    (0.22, -0.12, 0.815),  # cervical
    (0.40, -0.08, 0.765),  # supraclavicular
    (0.80, -0.10, 0.71),  # axillary
    (0.06, 0.12, 0.68),  # mediastinal
    (0.20, 0.00, 0.635),  # hilar
    (0.15, -0.15, 0.40),  # para-aortic
    (0.15, 0.20, 0.40),  # mesenteric
    (0.30, -0.12, 0.25),  # iliac
    (0.38, 0.32, 0.15),  # inguinal
)
# Largest radius (mm, average adult) of an ordinary lesion at each site; nodes, lung and liver may
# also carry a bulky mass (nodal conglomerate, lung primary, large metastasis).
_SITE_RADIUS = {
    "node": 22.0,
    "lung": 22.0,
    "liver": 22.0,
    "bone": 16.0,
    "near_uptake": 20.0,
    "soft": 16.0,
}
_BULKY_SITES = ("node", "lung", "liver")
_BULKY_RADIUS = (20.0, 36.0)


@dataclass(frozen=True)
class _Disease:
    """Lesion pattern of one AutoPET-II diagnosis: how many, where, how often bulky."""

    name: str
    probability: float
    count: tuple[int, int]  # inclusive range
    sites: dict[str, float]  # relative weights of _SITE_RADIUS keys
    bulky: float


_DISEASES = (
    _Disease(
        name="lymphoma",
        probability=0.35,
        count=(3, 8),
        sites={"node": 0.7, "bone": 0.08, "near_uptake": 0.1, "liver": 0.05, "soft": 0.05},
        bulky=0.35,
    ),
    _Disease(
        name="lung_cancer",  # the first lesion is the primary tumour
        probability=0.35,
        count=(2, 7),
        sites={"node": 0.4, "bone": 0.15, "near_uptake": 0.15, "lung": 0.15, "liver": 0.1},
        bulky=0.15,
    ),
    _Disease(
        name="melanoma",
        probability=0.3,
        count=(2, 8),
        sites={"soft": 0.3, "node": 0.3, "lung": 0.15, "liver": 0.1, "near_uptake": 0.1},
        bulky=0.1,
    ),
)


def _inside(organ: _Organ, rng: np.random.Generator, reach: float) -> tuple[float, float, float]:
    """Random point inside ``organ`` within ``reach`` of its normalised radius."""
    direction = rng.standard_normal(3)
    direction *= reach * rng.uniform() ** (1 / 3) / np.linalg.norm(direction)
    return tuple(c + d * r for c, d, r in zip(organ.center, direction, organ.radii, strict=True))


def _next_to(organ: _Organ, rng: np.random.Generator, gap_mm: float) -> tuple[float, float, float]:
    """Random point just outside ``organ`` (its surface plus ``gap_mm``) in the axial plane."""
    angle = rng.uniform(0, 2 * np.pi)
    dx, dy = np.cos(angle), np.sin(angle)
    scale = 1.0 / np.hypot(dx / organ.radii[0], dy / organ.radii[1])
    dz = rng.uniform(-0.5, 0.5) * organ.radii[2]
    cx, cy, cz = organ.center
    return cx + dx * (scale + gap_mm), cy + dy * (scale + gap_mm), cz + dz


def _lesion_site(
    site: str, radius: float, grid: _Grid, organs: dict[str, list[_Organ]], rng: np.random.Generator
) -> tuple[tuple[float, float, float], tuple[float, float]]:
    """Centre (mm) and CT range (HU) of one lesion at ``site``."""
    if site == "node":
        u, v, h = _NODE_STATIONS[int(rng.integers(len(_NODE_STATIONS)))]
        u *= rng.choice((-1.0, 1.0))
        du, dv, dh = rng.uniform(-1.0, 1.0, 3) * (0.04, 0.04, 0.012)
        return grid.world(u + du, v + dv, h + dh), (30.0, 50.0)
    if site == "lung":  # kept off the lung base, which the liver dome occupies
        lung = organs["lung"][int(rng.integers(2))]
        x, y, z = _inside(lung, rng, 0.65)
        return (x, y, max(z, lung.center[2] - 0.2 * lung.radii[2])), (15.0, 45.0)
    if site == "liver":  # hypodense on CT
        return _inside(organs["liver"][0], rng, 0.55), (20.0, 45.0)
    if site == "bone":  # lytic or sclerotic, in a vertebral body or the ilium
        if rng.uniform() < 0.65:
            h = rng.uniform(0.28, 0.8)
            center = grid.world(0.0, float(np.interp(h, _SPINE[0], _SPINE[1])), h)
        else:
            center = _inside(organs["ilium"][int(rng.integers(2))], rng, 0.4)
        return center, ((60.0, 200.0) if rng.uniform() < 0.5 else (500.0, 900.0))
    if site == "near_uptake":  # pelvic wall, paracardiac, adrenal/renal: hard for thresholding
        hot = [*organs["bladder"] * 2, *organs["left_ventricle"] * 2, *organs["kidney"]]
        hot += organs["renal_pelvis"]
        organ = hot[int(rng.integers(len(hot)))]
        return _next_to(organ, rng, 0.6 * radius), (30.0, 50.0)
    # subcutaneous or intramuscular (melanoma)
    h = rng.uniform(0.2, 0.74)
    a, b, cy = _body_section(grid, h)
    angle, depth = rng.uniform(0, 2 * np.pi), rng.uniform(0.8, 0.92)
    x, y = depth * a * np.cos(angle), cy + depth * b * np.sin(angle)
    return (x, y, grid.world(0.0, 0.0, h)[2]), (30.0, 55.0)


def _blob_params(
    radius: float, grid: _Grid, rng: np.random.Generator
) -> tuple[tuple[float, float, float], np.ndarray, np.ndarray]:
    """Radii (mm), rotation and lobes of an irregular blob of nominal ``radius``."""
    floor = 0.9 * max(grid.spacing)
    radii = tuple(max(radius * f, floor) for f in rng.uniform(0.7, 1.3, 3))
    lobes = np.column_stack(
        [
            rng.uniform(0.04, 0.16, 3),
            rng.standard_normal((3, 3)),
            rng.uniform(0, 2 * np.pi, 3),
        ]
    ).astype(np.float32)
    lobes[:, 1:4] /= np.linalg.norm(lobes[:, 1:4], axis=1, keepdims=True)
    return radii, _random_rotation(rng), lobes


def _add_lesions(
    pet: np.ndarray,
    ct: np.ndarray,
    label: np.ndarray,
    tissue: np.ndarray,
    grid: _Grid,
    organs: dict[str, list[_Organ]],
    liver_suv: float,
    rng: np.random.Generator,
) -> None:
    """Paint 0-8 lesions following one diagnosis: PET uptake, CT density and the label."""
    disease = _DISEASES[int(rng.choice(len(_DISEASES), p=[d.probability for d in _DISEASES]))]
    count = 0 if rng.uniform() < 0.04 else int(rng.integers(disease.count[0], disease.count[1] + 1))
    names = list(disease.sites)
    weights = np.array(list(disease.sites.values()))
    for index in range(count):
        site = names[int(rng.choice(len(names), p=weights / weights.sum()))]
        bulky = site in _BULKY_SITES and rng.uniform() < disease.bulky
        if index == 0 and disease.name == "lung_cancer":
            site, bulky = "lung", True
        radius = rng.uniform(*_BULKY_RADIUS) if bulky else rng.uniform(4.0, _SITE_RADIUS[site])
        radius *= grid.size_scale
        center, (hu_lo, hu_hi) = _lesion_site(site, radius, grid, organs, rng)
        radii, rotation, lobes = _blob_params(radius, grid, rng)
        if rng.uniform() < 0.2:
            suv = rng.uniform(2.0, 3.0)  # low contrast: thresholding misses it, or part of it
        else:
            suv = float(np.exp(rng.uniform(np.log(3.2), np.log(15.0))))
        if site == "liver":
            suv = max(suv, 1.35 * liver_suv)
        hu = rng.uniform(hu_lo, hu_hi)
        necrotic = radius > 14.0 and rng.uniform() < 0.4
        found = _ellipsoid(grid, center, radii, rotation, lobes)
        if found is None:
            continue
        sl, d2 = found
        mask = (d2 <= 1.0) & (tissue[sl] != _T.AIR)
        uptake = np.float32(suv) * (1.0 - np.float32(0.3) * d2)
        if necrotic:
            uptake[d2 < 0.3] *= np.float32(0.35)
        pet[sl] = np.where(mask, np.maximum(pet[sl], uptake), pet[sl])
        ct[sl][mask] = hu
        label[sl][mask] = 1


def _add_hot_spots(
    pet: np.ndarray,
    tissue: np.ndarray,
    grid: _Grid,
    organs: dict[str, list[_Organ]],
    rng: np.random.Generator,
) -> None:
    """Physiological uptake that is not disease: the false positives of SUV thresholding."""
    spots: list[tuple[tuple[float, float, float], tuple[float, float, float], float]] = []
    s = grid.size_scale
    if rng.uniform() < 0.3:  # brown fat, symmetric
        for _ in range(int(rng.integers(1, 4))):
            u, h, suv = rng.uniform(0.3, 0.55), rng.uniform(0.755, 0.79), rng.uniform(3.0, 9.0)
            r = rng.uniform(5.0, 12.0) * s
            spots += [(grid.world(side * u, -0.1, h), (r, r, 1.5 * r), suv) for side in (-1, 1)]
        if rng.uniform() < 0.5:
            h, suv, r = rng.uniform(0.6, 0.72), rng.uniform(3.0, 7.0), rng.uniform(5.0, 10.0) * s
            spots += [(grid.world(side * 0.22, -0.55, h), (r, r, 2 * r), suv) for side in (-1, 1)]
    if rng.uniform() < 0.75:  # urine in the ureters
        bladder = organs["bladder"][0]
        for _ in range(int(rng.integers(1, 4))):
            start = organs["renal_pelvis"][int(rng.integers(0, 2))].center
            f = rng.uniform(0.15, 0.9)
            x = start[0] * (1 - 0.6 * f)
            y = start[1] + f * (bladder.center[1] - start[1]) * 0.7
            z = start[2] + f * (bladder.center[2] - start[2])
            r = rng.uniform(3.0, 5.0) * s
            spots.append(((x, y, z), (r, r, rng.uniform(8.0, 20.0) * s), rng.uniform(4.0, 15.0)))
    if rng.uniform() < 0.8:  # active bowel segments
        loops = organs["bowel"]
        for _ in range(int(rng.integers(1, 5))):
            loop = loops[int(rng.integers(0, len(loops)))]
            spots.append((loop.center, tuple(0.8 * r for r in loop.radii), rng.uniform(2.5, 5.5)))
    if rng.uniform() < 0.3:  # muscle activity: neck or psoas
        side = 1.0 if rng.uniform() < 0.5 else -1.0
        if rng.uniform() < 0.5:
            center, radii = grid.world(side * 0.25, 0.05, 0.8), (8.0 * s, 8.0 * s, 35.0 * s)
        else:
            center, radii = grid.world(side * 0.2, -0.33, 0.3), (11.0 * s, 11.0 * s, 50.0 * s)
        spots.append((center, radii, rng.uniform(2.5, 4.5)))
    if rng.uniform() < 0.25:  # degenerative shoulder joint
        side = 1.0 if rng.uniform() < 0.5 else -1.0
        r = 12.0 * s
        spots.append((grid.world(side * 0.9, -0.15, 0.735), (r, r, r), rng.uniform(3.0, 5.5)))
    for center, radii, suv in spots:
        found = _ellipsoid(grid, center, radii)
        if found is None:
            continue
        sl, d2 = found
        uptake = np.float32(suv) * (1.0 - np.float32(0.3) * d2)
        mask = (d2 <= 1.0) & (tissue[sl] != _T.AIR)
        pet[sl] = np.where(mask, np.maximum(pet[sl], uptake), pet[sl])


def _pet_acquisition(pet: np.ndarray, spacing: Spacing3, rng: np.random.Generator) -> np.ndarray:
    """Count noise (Poisson-like, so relative noise falls with uptake) then scanner resolution.

    Noise is drawn before the blur so it ends up spatially correlated like reconstructed PET; its
    level is set so that the liver shows a 9-14 % coefficient of variation after blurring.
    Overwrites ``pet`` (the caller's working copy) to keep large volumes within memory.
    """
    sigmas = [PET_FWHM_MM / (2 * np.sqrt(2 * np.log(2))) / s for s in spacing]
    kernel_power = 1.0
    for sigma in sigmas:
        taps = np.arange(-int(3 * sigma + 1), int(3 * sigma + 1) + 1)
        weights = np.exp(-0.5 * (taps / sigma) ** 2)
        kernel_power *= float((weights**2).sum() / weights.sum() ** 2)
    cov = rng.uniform(0.09, 0.14)
    counts_per_suv = np.float32(kernel_power / (cov**2 * 2.2))
    pet *= counts_per_suv
    noisy = rng.standard_gamma(pet, dtype=np.float32)
    noisy /= counts_per_suv
    ndimage.gaussian_filter(noisy, sigmas, output=pet, truncate=3.0)  # reuse the buffer
    return pet


def _ct_acquisition(ct: np.ndarray, spacing: Spacing3, rng: np.random.Generator) -> np.ndarray:
    """Slight reconstruction blur plus quantum noise, clipped to the 12-bit HU range.

    Like :func:`_pet_acquisition`, overwrites its input to keep large volumes within memory.
    """
    blurred = ndimage.gaussian_filter(ct, [0.9 / s for s in spacing], truncate=3.0)
    noise = rng.standard_normal(dtype=np.float32, out=ct)  # reuse the buffer
    noise *= np.float32(rng.uniform(10.0, 20.0))
    blurred += noise
    return np.clip(blurred, -1024.0, 3071.0, out=blurred)


def make_phantom(
    seed: int, shape: tuple[int, int, int] | None = None, spacing: Spacing3 = DEFAULT_SPACING
) -> Phantom:
    """Generate one PET/CT case; the same ``seed`` (and shape, spacing) gives identical arrays.

    Without ``shape`` the seed also picks a modest whole-body size, about (160-200)^2 x (200-320).
    The anatomy and lesions drawn for a seed do not depend on ``shape``, only their size in mm.
    """
    rng = np.random.default_rng(seed)
    side, length = int(rng.integers(160, 201)), int(rng.integers(200, 321))
    size = (side, side, length) if shape is None else tuple(int(n) for n in shape)
    if len(size) != 3 or min(size) < 8:
        raise ValueError(f"phantom shape must be three sizes of at least 8 voxels, got {shape}")
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"phantom spacing must be three positive numbers, got {spacing}")
    grid = _make_grid(size, spacing, rng)
    tissue = np.zeros(size, dtype=np.uint8)
    _paint_cross_sections(tissue, grid, rng)
    organs = _paint_organs(tissue, grid, rng)
    ranges = np.array([_TISSUE_RANGES[t] for t in _T], dtype=np.float64)
    hu = rng.uniform(ranges[:, 0], ranges[:, 1]).astype(np.float32)
    suv = rng.uniform(ranges[:, 2], ranges[:, 3]).astype(np.float32)
    if rng.uniform() < 0.4:  # myocardial uptake suppressed by fasting
        suv[_T.MYOCARDIUM] = rng.uniform(1.2, 2.2)
    ct, pet = hu[tissue], suv[tissue]
    label = np.zeros(size, dtype=np.uint8)
    _add_hot_spots(pet, tissue, grid, organs, rng)
    _add_lesions(pet, ct, label, tissue, grid, organs, float(suv[_T.LIVER]), rng)
    del tissue
    pet = _pet_acquisition(pet, spacing, rng)
    ct = _ct_acquisition(ct, spacing, rng)
    return Phantom(ct=ct, pet=pet, label=label, spacing=spacing)


def save_phantom_case(phantom: Phantom, folder: str | Path, case_id: str) -> dict[str, Path]:
    """Write one case in nnU-Net layout: ``images/{id}_0000`` CT, ``_0001`` PET, ``labels/{id}``.

    Channel order matches the model and upstream AutoPET-II training (0 CT, 1 PET). qform and
    sform are both set to scanner coordinates so every NIfTI reader agrees on the geometry.
    """
    folder = Path(folder)
    paths = {
        "ct": folder / "images" / f"{case_id}_0000.nii.gz",
        "pet": folder / "images" / f"{case_id}_0001.nii.gz",
        "label": folder / "labels" / f"{case_id}.nii.gz",
    }
    arrays = {
        "pet": phantom.pet.astype(np.float32, copy=False),
        "ct": phantom.ct.astype(np.float32, copy=False),
        "label": phantom.label.astype(np.uint8, copy=False),
    }
    affine = phantom.affine
    for key, path in paths.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        image = nib.Nifti1Image(arrays[key], affine)
        image.set_qform(affine, code=1)
        image.set_sform(affine, code=1)
        image.header.set_xyzt_units(xyz="mm")
        nib.save(image, path)
    return paths
