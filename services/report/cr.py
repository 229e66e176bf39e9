"""The real chest CR (MONOCHROME1, 1955×1841) from PyPI ``pydicom-data``, checked by sha256.

Until the dataset table in services/common/datasets.py holds it, this module is the one place that
names the file and its hash (``pydicom-data==1.0.0``, ``data_store/data/RG1_UNCR.dcm``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

PACKAGE, VERSION = "pydicom-data", "1.0.0"
MEMBER = "data_store/data/RG1_UNCR.dcm"
SHA256 = "946f28f48b9fbf360196a9b835c8fce83b0c654bf85a5107663c8a61df02e498"
SIZE = 7200056


class ChestCRMissing(FileNotFoundError):
    pass


def chest_cr_path() -> Path:
    """Path of the chest CR inside the installed ``pydicom-data``; raises if missing or altered."""
    try:
        import data_store
    except ImportError as error:
        raise ChestCRMissing(f"install {PACKAGE}=={VERSION} (pip) to get the chest CR") from error
    path = Path(data_store.__file__).parent / "data" / Path(MEMBER).name
    if not path.is_file():
        raise ChestCRMissing(f"{path} is missing; reinstall {PACKAGE}=={VERSION}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if path.stat().st_size != SIZE or digest != SHA256:
        raise ChestCRMissing(f"{path}: sha256 {digest} differs from the pinned {SHA256}")
    return path
