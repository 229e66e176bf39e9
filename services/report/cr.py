"""The real chest CR (MONOCHROME1, 1955×1841) of pydicom's test data, through the dataset fetcher
(services/common/datasets/pinned.toml: ``pydicom_chest_cr``, sha256-pinned)."""

from __future__ import annotations

from pathlib import Path

from services.common.datasets import fetch


def chest_cr_path() -> Path:
    return fetch("pydicom_chest_cr") / "RG1_UNCR.dcm"
