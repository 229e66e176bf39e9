"""The served label table and the TotalSegmentator mapping."""

from __future__ import annotations

import numpy as np
import pytest

from services.segmentation.labels import (
    CLASS_NAMES,
    NUM_CLASSES,
    TARGETS,
    class_index,
    mapping_from_structures,
    merge_labels,
)

STRUCTURES = {1: "spleen", 2: "kidney_right", 3: "kidney_left", 5: "liver", 6: "stomach", 7: "pancreas",
              10: "lung_upper_lobe_left", 11: "lung_lower_lobe_left", 12: "lung_upper_lobe_right",
              13: "lung_middle_lobe_right", 14: "lung_lower_lobe_right", 25: "sacrum", 31: "vertebrae_L1",
              44: "vertebrae_C7", 51: "heart", 52: "aorta", 92: "rib_left_1", 4: "gallbladder"}


def test_table_is_consecutive_and_holds_the_required_targets() -> None:
    assert [t.index for t in TARGETS] == list(range(NUM_CLASSES))
    required = {"liver", "spleen", "kidney_left", "kidney_right", "stomach", "pancreas", "lung_left",
                "lung_right", "heart", "aorta", "vertebral_column"}
    assert required <= set(CLASS_NAMES) and CLASS_NAMES[0] == "background"


def test_lobes_merge_into_lungs_and_vertebrae_into_the_column() -> None:
    m = mapping_from_structures(STRUCTURES)
    assert m[10] == m[11] == class_index("lung_left")
    assert m[12] == m[13] == m[14] == class_index("lung_right")
    assert m[25] == m[31] == m[44] == class_index("vertebral_column")
    assert m[2] == class_index("kidney_right") and m[3] == class_index("kidney_left")
    assert 92 not in m and 4 not in m  # ribs, gallbladder: background


def test_merge_labels_vectorised() -> None:
    fine = np.array([[0, 10, 13, 92, 31, 5]], dtype=np.uint8)
    assert merge_labels(fine, STRUCTURES).tolist() == [[0, 7, 8, 0, 11, 1]]


def test_unknown_class_name_lists_the_classes() -> None:
    with pytest.raises(KeyError, match="liver"):
        class_index("livr")
