"""Rendered images paired with real reports.

* Reports are split by report id (70/10/20, ``reports.split_of``).
* Training images come from a bank rendered per finding combination with training seeds
  (``TRAIN_SEEDS``); each epoch pairs every training report with a random bank image whose inserted
  findings equal the report's findings.
* Validation and test reports each get their own image, rendered with seeds from a disjoint range
  (``EVAL_SEEDS``) from the CT chosen by a hash of the report id.

Images are cached as uint8 under ``.cache/report/`` (a re-run of the same version reuses them).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.report import drr
from services.report.findings import FINDINGS, to_names
from services.report.reports import PAD, Report, Vocabulary, load_reports, split_reports

log = logging.getLogger(__name__)

GENERATOR_VERSION = "1"  # bump when drr.py changes what it draws
TRAIN_SEEDS = 0  # training bank seeds: 0 … 499,999
VISUAL_SEEDS = 500_000  # visual pretraining bank (random finding combinations): 500,000 … 999,999
EVAL_SEEDS = 1_000_000  # validation/test seeds: 1,000,000 …
VISUAL_P = 0.3  # chance of each abnormal finding in a visual pretraining image (independently)


def _h(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


def combo_of(labels: np.ndarray) -> tuple[str, ...]:
    return tuple(n for n in to_names(labels) if n != "normal")


def bank_size(count: int) -> int:
    """Images per finding combination in the training bank: more for common combinations, 6…60."""
    return int(np.clip(round(3 * np.sqrt(count)), 6, 60))


def cache_dir() -> Path:
    return drr.phantom_cache_dir().parent


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write ``path`` whole or not at all: concurrent trainings may render and read the same cache."""
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)


def render_one(combo: tuple[str, ...], case: str, seed: int) -> np.ndarray:
    image = drr.render(drr.load_phantom(case), combo, seed=seed)
    return np.round(image * 255).astype(np.uint8)


def train_bank(reports: list[Report]) -> tuple[np.ndarray, list[tuple[str, ...]]]:
    """(B, 128, 128) uint8 images and the findings inserted into each."""
    path = cache_dir() / f"bank_train_v{GENERATOR_VERSION}.npz"
    counts = Counter(combo_of(r.labels) for r in reports)
    plan = [(combo, i) for combo in sorted(counts) for i in range(bank_size(counts[combo]))]
    key = hashlib.sha256(repr(plan).encode()).hexdigest()[:16]
    if path.exists():
        d = np.load(path, allow_pickle=False)
        if str(d["key"]) == key:
            return d["images"], [tuple(c.split("|")) if c else () for c in d["combos"]]
    images = []
    for j, (combo, i) in enumerate(plan):
        case = drr.CT_CASES[(i + _h("|".join(combo))) % len(drr.CT_CASES)]
        images.append(render_one(combo, case, TRAIN_SEEDS + j))
        if j % 200 == 0:
            log.info("training bank: %d / %d images", j, len(plan))
    combos = [c for c, _ in plan]
    path.parent.mkdir(parents=True, exist_ok=True)
    save_npz(path, images=np.stack(images), combos=np.array(["|".join(c) for c in combos]), key=key)
    return np.stack(images), combos


def visual_bank(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(count, 128, 128) uint8 images with *independently drawn* findings and their (count, F) label vectors.

    The report-combination bank mirrors the corpus: rare findings (pneumothorax: 17 reports) get a handful of
    images and findings co-occur as in the reports. This bank draws each abnormal finding with probability
    ``VISUAL_P`` so that the visual extractor sees every finding often and alone, not only its usual companions.
    Training seeds only (``VISUAL_SEEDS`` + i); CTs rotated."""
    from services.report.findings import ABNORMAL, to_vector

    path = cache_dir() / f"bank_visual_v{GENERATOR_VERSION}_{count}_{seed}.npz"
    if path.exists():
        d = np.load(path, allow_pickle=False)
        return d["images"], d["labels"]
    rng = np.random.default_rng(seed)
    draws = rng.random((count, len(ABNORMAL))) < VISUAL_P
    combos = [tuple(n for n, on in zip(ABNORMAL, row, strict=True) if on) for row in draws]
    images = []
    for j, combo in enumerate(combos):
        images.append(render_one(combo, drr.CT_CASES[j % len(drr.CT_CASES)], VISUAL_SEEDS + seed * 100_000 + j))
        if j % 200 == 0:
            log.info("visual bank: %d / %d images", j, count)
    labels = np.stack([to_vector(dict.fromkeys(FINDINGS, False) | dict.fromkeys(c, True) | {"normal": not c})
                       for c in combos]).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_npz(path, images=np.stack(images), labels=labels)
    return np.stack(images), labels


def augment(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(N, 1, H, W) float in [0, 1] → the same, re-posed and re-exposed a little per image: shift ±4 px,
    scale 0.94–1.06, rotation ±3°, gamma 0.8–1.25, contrast/brightness ±8 %, Gaussian noise σ ≤ 0.02.
    Multiplies the variety of a bank of a few hundred renders at almost no cost (no re-rendering)."""
    import torch
    import torch.nn.functional as F

    n, _, h, _ = images.shape
    angle = np.radians(rng.uniform(-3, 3, n))
    scale = rng.uniform(0.94, 1.06, n)
    shift = rng.uniform(-4, 4, (n, 2)) * 2 / h
    theta = np.zeros((n, 2, 3), np.float32)
    theta[:, 0, 0], theta[:, 0, 1] = np.cos(angle) / scale, -np.sin(angle) / scale
    theta[:, 1, 0], theta[:, 1, 1] = np.sin(angle) / scale, np.cos(angle) / scale
    theta[:, :, 2] = shift
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    grid = F.affine_grid(torch.from_numpy(theta), list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False).numpy()
    out = np.clip(out, 0, 1) ** rng.uniform(0.8, 1.25, (n, 1, 1, 1))
    out = out * rng.uniform(0.92, 1.08, (n, 1, 1, 1)) + rng.uniform(-0.08, 0.08, (n, 1, 1, 1))
    out = out + rng.normal(0, 1, out.shape) * rng.uniform(0, 0.02, (n, 1, 1, 1))
    return np.clip(out, 0, 1).astype(np.float32)


def eval_images(reports: list[Report], split: str) -> np.ndarray:
    """One image per report, (N, 128, 128) uint8, in the order of ``reports``."""
    path = cache_dir() / f"{split}_v{GENERATOR_VERSION}.npz"
    key = hashlib.sha256("|".join(r.uid for r in reports).encode()).hexdigest()[:16]
    if path.exists():
        d = np.load(path, allow_pickle=False)
        if str(d["key"]) == key:
            return d["images"]
    images = np.stack([render_one(combo_of(r.labels), drr.CT_CASES[_h(r.uid) % len(drr.CT_CASES)],
                                  EVAL_SEEDS + _h(f"{split}:{r.uid}") % 1_000_000) for r in reports])
    path.parent.mkdir(parents=True, exist_ok=True)
    save_npz(path, images=images, key=key)
    return images


@dataclass
class Corpus:
    splits: dict[str, list[Report]]
    vocab: Vocabulary

    @classmethod
    def load(cls, vocab: Vocabulary | None = None) -> Corpus:
        splits = split_reports(load_reports())
        return cls(splits, vocab or Vocabulary.build(r.text for r in splits["train"]))

    def tokens(self, split: str, max_len: int = 62, rewrite: Callable[[str], str] | None = None) -> np.ndarray:
        """(N, max_len) token ids, BOS … EOS, padded; ``rewrite`` changes each text first (e.g. its sentence order)."""
        rows = [self.vocab.encode(rewrite(r.text) if rewrite else r.text)[:max_len] for r in self.splits[split]]
        out = np.full((len(rows), max_len), PAD, dtype=np.int64)
        for i, row in enumerate(rows):
            out[i, : len(row)] = row
        return out

    def labels(self, split: str) -> np.ndarray:
        return np.stack([r.labels for r in self.splits[split]])


class TrainPairs:
    """Each epoch: every training report with a random bank image of the same findings."""

    def __init__(self, corpus: Corpus, bank: np.ndarray, bank_combos: list[tuple[str, ...]],
                 augment: bool = False, abnormal_repeat: int = 1) -> None:
        self.augment = augment
        self.tokens = corpus.tokens("train")
        self.labels = corpus.labels("train")
        # reports with findings shown ``abnormal_repeat`` times per epoch: 2/3 of the reports are normal, and a
        # decoder trained on them as they come learns the normal template as the answer to every image
        abnormal = np.flatnonzero(self.labels[:, FINDINGS.index("normal")] < 0.5)
        self.pool = np.concatenate([np.arange(len(self.labels))] + [abnormal] * max(abnormal_repeat - 1, 0))
        self.bank = bank
        by_combo: dict[tuple[str, ...], list[int]] = defaultdict(list)
        for i, combo in enumerate(bank_combos):
            by_combo[combo].append(i)
        self.choices = [by_combo[combo_of(lab)] for lab in self.labels]
        missing = sum(1 for c in self.choices if not c)
        if missing:
            raise ValueError(f"{missing} training reports have no bank image of their findings")

    def __len__(self) -> int:
        return len(self.pool)

    def picks(self, rng: np.random.Generator, batch_size: int, bucket: int = 1):  # noqa: ANN201
        """Each epoch's batches as (report indices, bank indices, tokens, labels). ``bucket`` > 1: reports are
        sorted by length within each run of ``bucket`` batches (batches then in random order), so that a batch
        pads to a length close to its reports' (about 1.5× less decoder work at ``bucket`` 16)."""
        order = self.pool[rng.permutation(len(self.pool))]
        if bucket > 1:
            lengths = (self.tokens != PAD).sum(1)
            span = batch_size * bucket
            order = np.concatenate([c[np.argsort(lengths[c], kind="stable")]
                                    for c in np.split(order, range(span, len(order), span))])
        starts = np.arange(0, len(order), batch_size)
        for start in starts[rng.permutation(len(starts))] if bucket > 1 else starts:
            idx = order[start:start + batch_size]
            pick = np.array([self.choices[i][rng.integers(len(self.choices[i]))] for i in idx])
            yield idx, pick, self.tokens[idx], self.labels[idx]

    def epoch(self, rng: np.random.Generator, batch_size: int):  # noqa: ANN201
        for idx, pick, _, _ in self.picks(rng, batch_size):
            images = self.bank[pick].astype(np.float32)[:, None] / 255.0
            if self.augment:
                images = augment(images, rng)
            elif rng.random() < 0.5:  # small intensity jitter: gamma
                images = images ** rng.uniform(0.8, 1.25)
            yield idx, images, self.tokens[idx], self.labels[idx]


__all__ = ["FINDINGS", "Corpus", "TrainPairs", "train_bank", "visual_bank", "augment", "eval_images", "combo_of"]
