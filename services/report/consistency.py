"""Does the written report say what the finding head sees? Structured findings and the consistency guard.

Every report answer carries each finding's probability, its **threshold calibrated on the validation split**
and whether it is present, and a consistency block computed from the generated text with the project's own rule
labeller (``services.report.findings``, the labeller that clinical efficacy is scored with):

* ``missing``: a present finding the text does not mention;
* ``contradicted``: a present finding the text denies — a negated mention the labeller reads ("no pleural
  effusion") or a normal statement that excludes it (``NORMAL_STATEMENTS``: "the lungs are clear" excludes
  opacity, nodule/mass and atelectasis; "the heart is normal in size" excludes cardiomegaly; …);
* ``unsupported``: a finding the text affirms while the head calls it absent;
* ``unchecked``: findings whose head is not validated (validation AUROC below ``MIN_AUROC``: nodule/mass and
  fracture): their probability is reported, ``present`` is null, and they never make the answer inconsistent.

``ok`` is true when the first three lists are empty. Thresholds (``thresholds.json`` beside the checkpoint) come
from one command, on the validation split only::

    python -m services.report.consistency    # thresholds.json; prints the test-split figures of docs/report.md

Serving needs NumPy only (the gateway imports this module); the calibration imports torch lazily.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from services.report.findings import _COMPILED, ABNORMAL, FINDINGS, _negated, label_text, sentences
from services.report.serving import checkpoint_dir

log = logging.getLogger(__name__)

THRESHOLDS_FILE = "thresholds.json"
DEFAULT_THRESHOLD = 0.5  # without thresholds.json
MIN_POSITIVES = 5  # fewer validation positives: no F1 to maximise; the threshold keeps SPECIFICITY instead
SPECIFICITY = 0.99  # of the validation negatives, for findings with fewer than MIN_POSITIVES positives
MIN_AUROC = 0.7  # a lower validation AUROC: the finding is reported but not called present or absent
GRID = np.round(np.arange(0.01, 1.0, 0.01), 2)
BOOTSTRAP = 500
LABELLER = "services.report.findings.label_text (the rule labeller of clinical efficacy)"

#: normal statements and the findings each one excludes (matched per sentence, lower case)
NORMAL_STATEMENTS: tuple[tuple[str, re.Pattern[str], tuple[str, ...]], ...] = tuple(
    (name, re.compile(pattern), excludes) for name, pattern, excludes in (
        ("normal heart size", r"\b(heart|cardiac|cardiomediastinal|cardiopericardial)\b[^.;]*\b(normal|within normal "
         r"limits|unremarkable|not enlarged)\b|\bnormal (heart|cardiac|cardiomediastinal)\b", ("cardiomegaly",)),
        ("clear lungs", r"\bclear lungs?\b|\blungs?\b[^.;]*\b(are|is) (grossly |otherwise )?clear\b",
         ("opacity_consolidation", "nodule_mass", "atelectasis")),
        ("no acute cardiopulmonary disease", r"\bno (acute |active )?(cardiopulmonary|intrathoracic|pulmonary|"
         r"cardiac or pulmonary) (abnormalit(y|ies)|disease|process|findings?)\b|\bnormal (chest|study|examination)\b",
         ("pleural_effusion", "opacity_consolidation", "pneumothorax", "atelectasis")),
        ("clear pleural spaces", r"\b(pleural spaces?|costophrenic (angles?|sulci))\b[^.;]*\b(clear|sharp|normal)\b",
         ("pleural_effusion",)),
        ("intact bones", r"\b(osseous|bony|skeletal) (structures?|thorax)\b[^.;]*\b(intact|normal|unremarkable|within "
         r"normal limits)\b|\bno (acute )?(osseous|bony|skeletal) (abnormalit(y|ies)|findings?|injury|lesions?)\b",
         ("fracture",)),
    ))


# ---- thresholds ---------------------------------------------------------------------------------------------

def thresholds_path() -> Path:
    return checkpoint_dir() / THRESHOLDS_FILE


@functools.lru_cache(maxsize=1)
def load_thresholds() -> dict[str, dict[str, Any]]:
    """Per finding: ``threshold``, ``checked`` and how it was set. Without ``thresholds.json``: 0.5, all checked."""
    path = thresholds_path()
    if path.exists():
        return json.loads(path.read_text())["findings"]
    return {name: {"threshold": DEFAULT_THRESHOLD, "checked": True, "method": "default (no thresholds.json)"}
            for name in FINDINGS}


def f1_curve(probs: np.ndarray, labels: np.ndarray, grid: np.ndarray = GRID) -> np.ndarray:
    """F1 of ``probs ≥ t`` against ``labels`` for every ``t`` in ``grid``."""
    pred = probs[None, :] >= grid[:, None]
    gold = labels[None, :] > 0.5
    tp, fp, fn = (pred & gold).sum(1), (pred & ~gold).sum(1), (~pred & gold).sum(1)
    return 2 * tp / np.maximum(2 * tp + fp + fn, 1)


def f1_threshold(probs: np.ndarray, labels: np.ndarray, grid: np.ndarray = GRID) -> float:
    """The F1-maximising threshold on ``grid``; ties: the middle of the tied thresholds."""
    f1 = f1_curve(probs, labels, grid)
    return float(grid[np.flatnonzero(f1 == f1.max())].mean())


def bagged_threshold(probs: np.ndarray, labels: np.ndarray, resamples: int = BOOTSTRAP, seed: int = 0) -> float:
    """Median over bootstrap resamples of the F1-maximising threshold (steadier than one maximum on a few
    positives: with 10 validation positives the plain maximum sits wherever the last positive happens to be)."""
    rng = np.random.default_rng(seed)
    picks = []
    for _ in range(resamples):
        i = rng.integers(0, len(probs), len(probs))
        if labels[i].sum() > 0:
            picks.append(f1_threshold(probs[i], labels[i]))
    return round(float(np.median(picks)), 3) if picks else DEFAULT_THRESHOLD


def auroc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Mann–Whitney AUROC (ties count half); None without both classes."""
    pos, neg = scores[labels > 0.5], scores[labels <= 0.5]
    if len(pos) == 0 or len(neg) == 0:
        return None
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def calibrate(probs: np.ndarray, labels: np.ndarray, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Per finding, from validation probabilities (N, F) and labels (N, F): the threshold and whether it is checked."""
    out = {}
    for j, name in enumerate(FINDINGS):
        p, y = probs[:, j], labels[:, j]
        positives, area = int((y > 0.5).sum()), auroc(p, y)
        if positives >= MIN_POSITIVES:
            threshold, method = bagged_threshold(p, y, seed=seed), "F1-maximising on validation (bootstrap median)"
        else:  # too few positives for F1: call at most 1 % of the validation negatives positive
            threshold = round(float(np.quantile(p[y <= 0.5], SPECIFICITY)), 3)
            method = f"{SPECIFICITY:.0%} specificity on validation negatives ({positives} validation positives)"
        checked = area is None or area >= MIN_AUROC
        out[name] = {"threshold": threshold, "checked": bool(checked), "method": method,
                     "validation_positives": positives,
                     "validation_auroc": None if area is None else round(area, 3),
                     "validation_f1": round(float(f1_curve(p, y, np.array([threshold]))[0]), 3)}
    return out


# ---- structured findings and the guard ----------------------------------------------------------------------

@dataclass(frozen=True)
class FindingCall:
    name: str
    probability: float
    threshold: float
    present: bool | None  # None: the head is not validated for this finding
    checked: bool


def structured(probabilities: dict[str, float], thresholds: dict[str, dict[str, Any]] | None = None
               ) -> list[FindingCall]:
    """Each finding's probability, calibrated threshold and call, in ``FINDINGS`` order."""
    table = thresholds or load_thresholds()
    calls = []
    for name in FINDINGS:
        p = float(probabilities[name])
        spec = table.get(name, {"threshold": DEFAULT_THRESHOLD, "checked": True})
        t, checked = float(spec["threshold"]), bool(spec.get("checked", True))
        calls.append(FindingCall(name, p, t, (p >= t) if checked else None, checked))
    return calls


@dataclass(frozen=True)
class Consistency:
    ok: bool
    missing: list[str] = field(default_factory=list)
    contradicted: list[str] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)
    evidence: dict[str, str] = field(default_factory=dict)  # finding → the sentence that denies or affirms it
    labeller: str = LABELLER

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def messages(self, calls: list[FindingCall]) -> list[str]:
        """One plain sentence per problem, for the answer's ``warnings``."""
        by_name = {c.name: c for c in calls}
        say = lambda n: f"{n.replace('_', ' ')} (p {by_name[n].probability:.2f} ≥ {by_name[n].threshold:.2f})"  # noqa: E731
        out = [f"the text does not mention {say(n)}" for n in self.missing]
        out += [f"the text denies {say(n)}: \"{self.evidence.get(n, '')}\"" for n in self.contradicted]
        out += [f"the text names {n.replace('_', ' ')}, which the finding head calls absent "
                f"(p {by_name[n].probability:.2f} < {by_name[n].threshold:.2f})" for n in self.unsupported]
        return out


def read_text(text: str) -> tuple[set[str], dict[str, str], dict[str, str]]:
    """The abnormal findings ``text`` affirms (``label_text``), and per finding the first sentence that denies it
    (a negated mention, or a normal statement that excludes it) and the first that affirms it."""
    labels = label_text(text)
    affirmed = {name for name in ABNORMAL if labels[name]}
    denied: dict[str, str] = {}
    affirming: dict[str, str] = {}
    for sentence in sentences(text):
        for name, pattern in _COMPILED.items():
            for match in pattern.finditer(sentence):
                target = denied if _negated(sentence, match.start(), match.end()) else affirming
                target.setdefault(name, sentence)
        for _, pattern, excludes in NORMAL_STATEMENTS:
            if pattern.search(sentence):
                for name in excludes:
                    denied.setdefault(name, sentence)
    return affirmed, denied, affirming


def check(text: str, calls: list[FindingCall]) -> Consistency:
    """The guard: compare the text with the structured findings (abnormal findings only)."""
    affirmed, denied, affirming = read_text(text)
    by_name = {c.name: c for c in calls}
    present = [n for n in ABNORMAL if n in by_name and by_name[n].present is True]
    absent = [n for n in ABNORMAL if n in by_name and by_name[n].present is False]
    missing = [n for n in present if n not in affirmed and n not in denied]
    contradicted = [n for n in present if n not in affirmed and n in denied]
    unsupported = [n for n in absent if n in affirmed]
    evidence = {n: denied[n] for n in contradicted} | {n: affirming[n] for n in unsupported if n in affirming}
    return Consistency(not (missing or contradicted or unsupported), missing, contradicted, unsupported,
                       [c.name for c in calls if c.present is None], evidence)


# ---- the calibration command (torch) ------------------------------------------------------------------------

def split_probabilities(split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The served model's finding probabilities on a split's images, their MeSH labels and the images."""
    import torch

    from services.report import data, serving
    from services.report.evaluate import encode

    torch.set_num_threads(1)
    model, _, _ = serving.load_served()
    model.eval()
    corpus = data.Corpus.load()
    images = data.eval_images(corpus.splits[split], split)
    return encode(model, images)["finding_probs"].numpy(), corpus.labels(split), images


def measure_test_split(thresholds: dict[str, dict[str, Any]], beam_size: int = 1) -> dict[str, Any]:
    """On the test split (measured, never used to set anything): F1 of each call at the calibrated threshold and
    at 0.5, and how often the guard fires on the served model's own reports."""
    from services.report import serving
    from services.report.evaluate import generate

    probs, labels, images = split_probabilities("test")
    model, vocab, _ = serving.load_served()
    ids, _ = generate(model, images, beam_size=beam_size)
    texts = [vocab.decode(row) for row in ids]
    per_finding = {}
    for j, name in enumerate(FINDINGS):
        t = thresholds[name]["threshold"]
        f1 = f1_curve(probs[:, j], labels[:, j], np.array([t, DEFAULT_THRESHOLD]))
        per_finding[name] = {"positives": int(labels[:, j].sum()), "f1_calibrated": round(float(f1[0]), 3),
                             "f1_at_0.5": round(float(f1[1]), 3)}
    results = [check(text, structured(dict(zip(FINDINGS, map(float, p), strict=True)), thresholds))
               for text, p in zip(texts, probs, strict=True)]
    count = lambda key: {n: sum(n in getattr(r, key) for r in results) for n in ABNORMAL}  # noqa: E731
    gold = {(i, n) for i in range(len(labels)) for j, n in enumerate(FINDINGS) if n in ABNORMAL and labels[i, j] > 0.5}
    flags = {(i, n) for i, r in enumerate(results) for n in r.missing + r.contradicted}
    unseen = {(i, n) for i, n in gold if n not in results[i].unchecked and (i, n) not in flags
              and not label_text(texts[i])[n]}  # the reference has it, the text does not, and the guard is silent
    return {"decoding": "greedy" if beam_size == 1 else f"beam {beam_size}", "reports": len(results),
            "flags_missing_or_contradicted": len(flags), "flags_in_reference": len(flags & gold),
            "reference_findings_omitted_unflagged": len(unseen),
            "reference_findings_checked": sum(n not in results[i].unchecked for i, n in gold),
            "flagged": sum(not r.ok for r in results),
            "with_missing": sum(bool(r.missing) for r in results),
            "with_contradicted": sum(bool(r.contradicted) for r in results),
            "with_unsupported": sum(bool(r.unsupported) for r in results),
            "missing_by_finding": count("missing"), "contradicted_by_finding": count("contradicted"),
            "unsupported_by_finding": count("unsupported"), "per_finding": per_finding}


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Calibrate the finding thresholds on the validation split")
    parser.add_argument("--no-test", action="store_true", help="skip the test-split figures (greedy decoding)")
    parser.add_argument("--beams", type=int, nargs="+", default=[1, 3],
                        help="decodings for the test-split figures (1 = greedy; 3 = the gateway's default)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from services.report import serving
    from services.report.ood import file_sha256

    probs, labels, _ = split_probabilities("val")
    thresholds = calibrate(probs, labels)
    result: dict[str, Any] = {
        "command": "python -m services.report.consistency",
        "data": f"validation split: {len(labels)} reports, one rendered image each (MeSH labels)",
        "rules": {"threshold": f"bootstrap median ({BOOTSTRAP} resamples) of the F1-maximising threshold on a 0.01 "
                               f"grid; with fewer than {MIN_POSITIVES} validation positives, the {SPECIFICITY:.0%} "
                               f"quantile of the validation negatives' probabilities",
                  "checked": f"validation AUROC ≥ {MIN_AUROC} (or not measurable)"},
        "checkpoint_sha256": file_sha256(serving.checkpoint_path()),
        "findings": thresholds,
    }
    if not args.no_test:  # measured after the thresholds are fixed; nothing above reads it
        result["test_split"] = [measure_test_split(thresholds, beam) for beam in args.beams]
    thresholds_path().write_text(json.dumps(result, indent=1) + "\n")
    log.info("wrote %s", thresholds_path())
    for name, spec in thresholds.items():
        log.info("%-22s threshold %.3f  checked %s  (%s)", name, spec["threshold"], spec["checked"], spec["method"])
    for t in result.get("test_split", []):
        log.info("test split, %s: %d of %d reports flagged (missing %d, contradicted %d, unsupported %d); "
                 "%d of %d missing/contradicted flags are in the reference; %d of %d checked reference findings "
                 "omitted without a flag", t["decoding"], t["flagged"], t["reports"], t["with_missing"],
                 t["with_contradicted"], t["with_unsupported"], t["flags_in_reference"],
                 t["flags_missing_or_contradicted"], t["reference_findings_omitted_unflagged"],
                 t["reference_findings_checked"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
