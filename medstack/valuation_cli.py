"""``medstack valuation``: data valuation from the command line (the same code a worker runs).

    medstack valuation run --dataset organ-patches|digits|PATH.npz|PATH.zip --epochs 12 --seeds 3 --out DIR
    medstack valuation dataset organ-patches --out organ-patches.npz     # a job input file
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Annotated, Any

import typer

valuation_app = typer.Typer(help="Data valuation: Data SI / gradient-norm values, online selection, coresets.",
                            no_args_is_help=True)

BUILT_IN = ("organ-patches", "digits")
SAFE_INPUT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\.(npz|zip)$")


def _load(dataset: str, test_fraction: float, seed: int) -> Any:
    from services.valuation.data import digits, load_dataset, organ_patches

    if dataset == "organ-patches":
        return organ_patches()
    if dataset == "digits":
        return digits()
    path = Path(dataset)
    if not path.is_file():
        raise typer.BadParameter(f"{dataset!r} is neither a built-in set ({', '.join(BUILT_IN)}) nor a file")
    return load_dataset(path, test_fraction, seed)


class _Echo:
    """One progress line at most every 5 s."""

    def __init__(self) -> None:
        self.t0 = self.last = time.monotonic()

    def __call__(self, stage: str, fraction: float) -> None:
        now = time.monotonic()
        if now - self.last >= 5 or fraction >= 1:
            self.last = now
            typer.echo(f"[{now - self.t0:7.1f} s] {100 * fraction:5.1f} %  {stage}", err=True)


@valuation_app.command()
def run(
    out: Annotated[Path, typer.Option("--out", help="output folder (reused: a rerun resumes and overwrites)")],
    dataset: Annotated[str, typer.Option("--dataset", help="organ-patches, digits, or a .npz / .zip file")] = (
        "organ-patches"),
    epochs: Annotated[int, typer.Option("--epochs")] = 12,
    seeds: Annotated[int, typer.Option("--seeds", help="repeats with seeds seed, seed+1, …")] = 3,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    method: Annotated[str, typer.Option("--method", help="data_si, gradnorm or both")] = "both",
    model_family: Annotated[str, typer.Option("--model-family", help="small_cnn or resnet18_w")] = "small_cnn",
    width: Annotated[int, typer.Option("--width")] = 8,
    optimizer: Annotated[str, typer.Option("--optimizer", help="sgd or adam")] = "sgd",
    lr: Annotated[float | None, typer.Option("--lr", help="default 0.05 (sgd), 1e-3 (adam)")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 64,
    test_fraction: Annotated[float, typer.Option("--test-fraction", help="held out when a file has no split")] = 0.2,
    threads: Annotated[int, typer.Option("--threads", help="torch CPU threads")] = 1,
) -> None:
    """Value every training sample, run online selection and the coreset, write values/coreset/report."""
    from services.valuation.data import DatasetFormatError
    from services.valuation.job import ParamsError, ValuationParams, run_valuation

    raw: dict[str, Any] = {
        "epochs": epochs, "seeds": seeds, "seed": seed, "method": method, "model_family": model_family,
        "width": width, "optimizer": optimizer, "lr": lr, "batch_size": batch_size,
        "test_fraction": test_fraction, "threads": threads,
    }
    if dataset in BUILT_IN:
        raw["dataset"] = dataset.replace("-", "_")
    else:
        name = Path(dataset).name
        raw["dataset"], raw["input"] = "upload", name if SAFE_INPUT.match(name) else "input" + Path(dataset).suffix
    try:
        params = ValuationParams.parse(raw)
        ds = _load(dataset, test_fraction, seed)
    except (ParamsError, DatasetFormatError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error
    info = ds.describe()
    typer.echo(f"{info['name']}: {info['train']} training, {info['test']} held-out samples, "
               f"{len(ds.class_names)} classes, images {info['shape']}", err=True)
    report = run_valuation(ds, out, params, progress=_Echo())
    typer.echo(f"\n{'run':<18} {'held-out accuracy':>20} {'sample-epochs':>14}")
    for name, r in report["runs"].items():
        acc, kept = r["accuracy"], r["kept_fraction"]["mean"]
        typer.echo(f"{name:<18} {100 * acc['mean']:>11.2f} ± {100 * acc['std']:4.2f} % {100 * kept:>12.1f} %")
    core = report["coreset_fraction"]
    typer.echo(f"coreset size {100 * core['mean']:.1f} % of the training set; wall {report['wall_seconds']:.0f} s")
    typer.echo(json.dumps(report["claims"]))
    typer.echo(f"outputs in {out}")


@valuation_app.command("dataset")
def dataset_file(
    name: Annotated[str, typer.Argument(help="organ-patches or digits")],
    out: Annotated[Path, typer.Option("--out", help="the .npz to write")],
) -> None:
    """Write a built-in set as a job input file (.npz with x, y, ids, split, groups, class_names)."""
    from services.valuation.data import save_npz

    if name not in BUILT_IN:
        raise typer.BadParameter(f"{name!r} is not one of {', '.join(BUILT_IN)}")
    ds = _load(name, 0.2, 0)
    save_npz(ds, out)
    typer.echo(f"{out}: {len(ds)} samples, {len(ds.class_names)} classes")
