"""The structures MedStack evaluates localization on, with the TotalSegmentator labels each merges.

Templates may name any structure (their points are user-given); this table is what the evaluation,
the synthetic templates and the box-prompted segmenter's training data use.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

STRUCTURES: dict[str, tuple[str, ...]] = {
    "liver": ("liver",),
    "spleen": ("spleen",),
    "kidney_left": ("kidney_left", "kidney_cyst_left"),
    "kidney_right": ("kidney_right", "kidney_cyst_right"),
    "stomach": ("stomach",),
    "pancreas": ("pancreas",),
    "lung_left": (r"lung_.*_left",),
    "lung_right": (r"lung_.*_right",),
    "heart": ("heart", "atrial_appendage_left"),
    "aorta": ("aorta",),
    "esophagus": ("esophagus",),
    "trachea": ("trachea",),
    "inferior_vena_cava": ("inferior_vena_cava",),
    "duodenum": ("duodenum",),
    "sternum": ("sternum",),
    "thyroid_gland": ("thyroid_gland",),
    "adrenal_gland_left": ("adrenal_gland_left",),
    "adrenal_gland_right": ("adrenal_gland_right",),
}


def label_values(name: str, label_names: Mapping[int, str]) -> list[int]:
    """Label values of a TotalSegmentator map that make up ``name``."""
    patterns = STRUCTURES[name]
    return [v for v, n in label_names.items() if any(p == n or re.fullmatch(p, n) for p in patterns)]


def structure_mask(labels: np.ndarray, label_names: Mapping[int, str], name: str) -> np.ndarray:
    return np.isin(labels, label_values(name, label_names))
