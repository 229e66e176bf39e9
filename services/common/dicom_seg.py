"""DICOM SEG (highdicom) for a label mask computed on a DICOM series, referencing its slices.

Structure names map to SNOMED CT codes where a code is known; laterality ("left"/"right" in the
name) is kept in the segment label. Unknown names fall back to the generic "Tissue" type so a
new model never breaks the writer.
"""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.sr.codedict import codes

from services.common.dicom_series import DicomSeries

# served class name → SNOMED CT body structure (category, type)
_TYPES = {
    "liver": codes.SCT.Liver, "spleen": codes.SCT.Spleen, "kidney": codes.SCT.Kidney, "lung": codes.SCT.Lung,
    "heart": codes.SCT.Heart, "aorta": codes.SCT.Aorta, "stomach": codes.SCT.Stomach,
    "pancreas": codes.SCT.Pancreas, "bone": codes.SCT.Bone, "vertebra": codes.SCT.Bone, "fat": codes.SCT.AdiposeTissue,
    "soft_tissue": codes.SCT.SoftTissue, "air": codes.SCT.Air, "brain": codes.SCT.Brain,
}


def _property_type(name: str) -> hd.sr.CodedConcept:
    for key, code in _TYPES.items():
        if key in name:
            return code
    return codes.SCT.Tissue


def write_segmentation(
    mask: np.ndarray, series: DicomSeries, classes: dict[int, str], model: dict[str, str], path: Path
) -> Path:
    """``mask`` (z, y, x) on the series' grid (same order as ``series.datasets``); label 0 is not stored."""
    present = [int(v) for v in np.unique(mask) if v > 0]
    if not present:
        raise ValueError("the mask is empty: there is nothing to store in a DICOM SEG")
    # highdicom wants segment numbers 1..n: relabel present classes compactly
    relabel = np.zeros(max(classes) + 1, dtype=np.uint8)
    descriptions = []
    for number, label in enumerate(present, start=1):
        relabel[label] = number
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=classes[label],
                segmented_property_category=codes.SCT.Tissue,
                segmented_property_type=_property_type(classes[label]),
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=hd.AlgorithmIdentificationSequence(
                    name=model["name"], version=model["version"], family=codes.DCM.ArtificialIntelligence,
                ),
            )
        )
    seg = hd.seg.Segmentation(
        source_images=series.datasets,
        pixel_array=relabel[mask],
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=9000,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="MedStack",
        manufacturer_model_name=model["name"],
        software_versions=f"{model['version']} ({model['sha256'][:12]})",
        device_serial_number="medstack",
        series_description=f"{model['name']} v{model['version']}",
    )
    seg.save_as(path)
    return path
