"""A user's labelled CT dataset in the Medical Segmentation Decathlon / nnU-Net layout.

    <dataset_dir>/
        dataset.json         {"labels": {"background": 0, "liver": 1, ...}, "channel_names": {"0": "CT"}, ...}
                             (nnU-Net v2) or {"labels": {"0": "background", "1": "liver"}, "modality": {"0": "CT"}}
                             (MSD); "numTraining" is checked when present
        imagesTr/<case>_0000.nii.gz   (nnU-Net)  or  imagesTr/<case>.nii.gz  (MSD); CT in HU
        labelsTr/<case>.nii.gz        integer labels on the image's grid

NIfTI, NRRD or MetaImage files are accepted (services.common.volume.SUFFIXES). `verify_dataset` checks
every case and raises one `DatasetLayoutError` listing every problem.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.common.volume import SUFFIXES, read_volume

__all__ = ["DatasetLayoutError", "Case", "UserDataset", "verify_dataset"]


class DatasetLayoutError(ValueError):
    """A dataset folder that does not follow the documented layout; the message lists every problem."""


@dataclass(frozen=True)
class Case:
    name: str
    image: Path
    label: Path


@dataclass(frozen=True)
class UserDataset:
    root: Path
    classes: dict[int, str]  # {value: name}, 0 = background
    cases: tuple[Case, ...]

    @property
    def num_classes(self) -> int:
        return max(self.classes) + 1


def _stem(path: Path) -> str:
    name = path.name
    for suffix in sorted(SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return ""


def _parse_labels(raw: object, problems: list[str]) -> dict[int, str]:
    if not isinstance(raw, dict) or not raw:
        problems.append('dataset.json: "labels" must be a non-empty object')
        return {}
    classes: dict[int, str] = {}
    for key, value in raw.items():
        try:
            if isinstance(value, int):  # nnU-Net v2: name -> value
                classes[int(value)] = str(key)
            else:  # MSD: "value" -> name
                classes[int(key)] = str(value)
        except (TypeError, ValueError):
            problems.append(f'dataset.json: label entry {key!r}: {value!r} is neither "name": int nor "int": "name"')
    if classes and 0 not in classes:
        problems.append("dataset.json: labels must include background as value 0")
    if classes and sorted(classes) != list(range(max(classes) + 1)):
        problems.append(f"dataset.json: label values must be consecutive from 0, got {sorted(classes)}")
    return classes


def verify_dataset(root: str | Path, check_volumes: bool = True) -> UserDataset:
    """Check a dataset folder; return its parsed description or raise one combined error."""
    root = Path(root)
    problems: list[str] = []
    if not root.is_dir():
        raise DatasetLayoutError(f"{root}: not a folder")
    meta: dict = {}
    meta_path = root / "dataset.json"
    if not meta_path.is_file():
        problems.append("dataset.json is missing")
    else:
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as exc:
            problems.append(f"dataset.json is not valid JSON ({exc})")
    classes = _parse_labels(meta.get("labels"), problems) if meta else {}
    channels = meta.get("channel_names", meta.get("modality"))
    if meta and isinstance(channels, dict) and len(channels) != 1:
        problems.append(f"dataset.json: exactly one input channel (CT) is supported, got {channels}")

    images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
    for d in (images_dir, labels_dir):
        if not d.is_dir():
            problems.append(f"{d.name}/ is missing")
    cases: list[Case] = []
    if images_dir.is_dir() and labels_dir.is_dir():
        images = {_stem(p): p for p in images_dir.iterdir() if _stem(p) and not p.name.startswith(".")}
        labels = {_stem(p): p for p in labels_dir.iterdir() if _stem(p) and not p.name.startswith(".")}
        for name, label in sorted(labels.items()):
            image = images.get(f"{name}_0000", images.get(name))
            if image is None:
                problems.append(f"{name}: no image imagesTr/{name}_0000.nii.gz (or imagesTr/{name}.nii.gz)")
                continue
            cases.append(Case(name, image, label))
        paired = {c.image for c in cases}
        for _stem_name, image in sorted(images.items()):
            if image not in paired:
                problems.append(f"{image.name}: image without a label in labelsTr/")
        if not labels:
            problems.append("labelsTr/ holds no label files")
        n = meta.get("numTraining") if meta else None
        if isinstance(n, int) and n != len(cases):
            problems.append(f"dataset.json: numTraining is {n} but {len(cases)} labelled cases were found")

    if check_volumes:
        for case in cases:
            try:
                image, label = read_volume(case.image), read_volume(case.label)
            except Exception as exc:  # report every unreadable file, not only the first
                problems.append(f"{case.name}: {exc}")
                continue
            if not label.same_grid(image, atol=1e-3):
                problems.append(f"{case.name}: label grid {label.shape} {label.spacing} differs from image grid "
                                f"{image.shape} {image.spacing}")
            values = np.unique(label.array)
            if np.any(values != np.round(values)):
                problems.append(f"{case.name}: label map holds non-integer values")
            unknown = sorted(set(values.astype(np.int64).tolist()) - set(classes)) if classes else []
            if unknown:
                problems.append(f"{case.name}: label values {unknown} are not declared in dataset.json")
    if problems:
        raise DatasetLayoutError(f"{root}: {len(problems)} problem(s):\n  - " + "\n  - ".join(problems))
    return UserDataset(root=root, classes=classes, cases=tuple(cases))
