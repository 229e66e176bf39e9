"""One training run, with the three ways valuation uses it, checkpointed after every epoch.

* **observe**: train on every sample and score every sample (Data SI and gradient norm) before
  each epoch: the value table and the coreset come from these scores.
* **online selection** (`method=`): score before each epoch, keep the samples the method selects,
  train this epoch on those only with the learning rate scaled by the kept fraction (restored
  before the scheduler steps).
* **subset** (`subset=`): train on fixed indices (a coreset or a random subset), no scoring.

Each epoch writes `epoch_XXX.npz` (kept mask, per-tensor values, test accuracy) and then
`state.pt` (model, optimiser, scheduler, shuffling generator), both by write-then-rename, so a run
killed mid-way resumes from its last finished epoch and ends with the same files as an
uninterrupted run. A finished run writes `result.json` and is not redone.

Example::

    cfg = TrainConfig(epochs=12)
    run = train_run(train, test, cfg, seed=0, num_classes=10, method=Method.GRADNORM, run_dir=Path("work/gradnorm"))
    run.accuracy, run.sample_epochs, run.kept_fraction
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from services.valuation.data import ClassificationSet
from services.valuation.networks import ModelFamily, build_model
from services.valuation.selection import Method, select_cluster, select_thresh
from services.valuation.values import SampleScores, group_values, score_samples

__all__ = ["EpochRecord", "RunResult", "Tensors", "TrainConfig", "evaluate", "train_run"]

log = logging.getLogger(__name__)

Progress = Callable[[str, float], None]  # (stage, fraction of this run done)


@dataclass(frozen=True)
class TrainConfig:
    family: str = ModelFamily.SMALL_CNN.value
    width: int = 16
    epochs: int = 12
    batch_size: int = 64
    optimizer: str = "sgd"  # "sgd" (momentum 0.9) or "adam"
    lr: float = 0.05
    weight_decay: float = 5e-4
    momentum: float = 0.9
    milestones: tuple[float, ...] = (0.5, 0.75)  # fractions of the epochs; lr × 0.1 at each
    lr_adjust: bool = True  # online selection scales the epoch's lr by the kept fraction

    def milestone_epochs(self) -> list[int]:
        return sorted({max(1, int(round(f * self.epochs))) for f in self.milestones if 0 < f < 1})


@dataclass
class Tensors:
    """A split as tensors, standardised with the training split's per-channel mean and std."""

    x: torch.Tensor
    y: torch.Tensor

    @classmethod
    def from_set(cls, ds: ClassificationSet, mean: np.ndarray, std: np.ndarray) -> Tensors:
        x = (ds.x - mean[None, :, None, None]) / std[None, :, None, None]
        return cls(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), torch.from_numpy(ds.y))


@dataclass
class EpochRecord:
    epoch: int
    kept: np.ndarray  # (N,) bool, the samples trained on this epoch
    lr: float  # the learning rate actually applied
    train_loss: float
    test_accuracy: float
    seconds: float
    score_seconds: float = 0.0
    si: np.ndarray | None = None  # (N, P) per-tensor Data SI, when scored
    gradnorm: np.ndarray | None = None  # (N, P) per-tensor gradient norm, when scored

    def save(self, path: Path) -> None:
        arrays: dict[str, np.ndarray] = {
            "kept": self.kept,
            "scalars": np.array([self.epoch, self.lr, self.train_loss, self.test_accuracy, self.seconds,
                                 self.score_seconds]),
        }
        if self.si is not None:
            arrays["si"] = self.si
        if self.gradnorm is not None:
            arrays["gradnorm"] = self.gradnorm
        _atomic(path, lambda tmp: np.savez(tmp, **arrays))

    @classmethod
    def load(cls, path: Path) -> EpochRecord:
        with np.load(path) as f:
            s = f["scalars"]
            return cls(int(s[0]), f["kept"], float(s[1]), float(s[2]), float(s[3]), float(s[4]), float(s[5]),
                       f["si"] if "si" in f.files else None, f["gradnorm"] if "gradnorm" in f.files else None)


@dataclass
class RunResult:
    name: str
    seed: int
    accuracy: float  # held-out accuracy after the last epoch
    sample_epochs: int  # Σ over epochs of the samples trained on
    full_sample_epochs: int  # N × epochs
    seconds: float  # training + scoring, summed over epochs (resumed runs included)
    score_seconds: float
    records: list[EpochRecord] = field(default_factory=list, repr=False)
    tensor_names: list[str] = field(default_factory=list, repr=False)
    tensor_numels: list[int] = field(default_factory=list, repr=False)

    @property
    def kept_fraction(self) -> float:
        return self.sample_epochs / max(1, self.full_sample_epochs)

    def summary(self) -> dict[str, object]:
        return {
            "name": self.name, "seed": self.seed, "accuracy": self.accuracy, "sample_epochs": self.sample_epochs,
            "full_sample_epochs": self.full_sample_epochs, "kept_fraction": self.kept_fraction,
            "seconds": self.seconds, "score_seconds": self.score_seconds,
            "kept_per_epoch": [int(r.kept.sum()) for r in self.records],
            "test_accuracy_per_epoch": [r.test_accuracy for r in self.records],
            "tensor_names": self.tensor_names, "tensor_numels": self.tensor_numels,
        }


def _atomic(path: Path, write: Callable[[Path], object]) -> None:
    tmp = path.with_name(f".{path.name}.partial{path.suffix}")
    write(tmp)
    os.replace(tmp, path)


def evaluate(model: nn.Module, data: Tensors, batch_size: int = 512) -> float:
    """Accuracy on `data`, model in eval mode."""
    was = model.training
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, data.y.shape[0], batch_size):
            logits = model(data.x[start : start + batch_size])
            correct += int((logits.argmax(1) == data.y[start : start + batch_size]).sum())
    model.train(was)
    return correct / max(1, data.y.shape[0])


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"optimizer {cfg.optimizer!r} is not one of ['sgd', 'adam']")


def select(method: Method, scores: SampleScores) -> np.ndarray:
    """The online keep-mask of `method` from this epoch's scores."""
    spec = method.spec
    raw = scores.si if spec.value == "data_si" else scores.gradnorm
    if raw is None:
        raise ValueError(f"{method.value} needs {spec.value} scores")
    feats, _ = group_values(raw, scores.groups, scores.numels, spec.dims)
    if spec.strategy == "cluster":
        return select_cluster(feats)
    return select_thresh(feats)


def _train_epoch(model: nn.Module, opt: torch.optim.Optimizer, data: Tensors, idx: np.ndarray, batch_size: int,
                 generator: torch.Generator) -> float:
    model.train()
    order = torch.from_numpy(idx)[torch.randperm(idx.size, generator=generator)]
    total, seen = 0.0, 0
    for start in range(0, order.numel(), batch_size):
        batch = order[start : start + batch_size]
        if batch.numel() < 2 and order.numel() >= 2:
            continue  # BatchNorm needs two samples; a last batch of one is dropped
        loss = F.cross_entropy(model(data.x[batch]), data.y[batch])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += float(loss.detach()) * batch.numel()
        seen += batch.numel()
    return total / max(1, seen)


def train_run(
    train: Tensors,
    test: Tensors,
    cfg: TrainConfig,
    *,
    seed: int,
    num_classes: int,
    name: str = "run",
    method: Method | None = None,
    observe: bool = False,
    subset: np.ndarray | None = None,
    run_dir: Path | None = None,
    progress: Progress | None = None,
) -> RunResult:
    """Train one model for `cfg.epochs`; see the module docstring for the three modes."""
    if sum([method is not None, observe, subset is not None]) > 1:
        raise ValueError("choose at most one of method, observe and subset")
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        done = run_dir / "result.json"
        if done.is_file():
            return _load_result(run_dir, json.loads(done.read_text()))

    n = train.y.shape[0]
    torch.manual_seed(seed)
    model = build_model(cfg.family, train.x.shape[1], num_classes, width=cfg.width)
    opt = _optimizer(model, cfg)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=cfg.milestone_epochs(), gamma=0.1)
    generator = torch.Generator().manual_seed(seed)
    records: list[EpochRecord] = []
    start_epoch = 0
    state_path = run_dir / "state.pt" if run_dir else None
    if state_path is not None and state_path.is_file():
        state = torch.load(state_path, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        start_epoch = int(state["epoch"]) + 1
        records = [EpochRecord.load(run_dir / f"epoch_{e:03d}.npz") for e in range(start_epoch)]  # type: ignore[operator]
        log.info("%s seed %d: resuming at epoch %d of %d from %s", name, seed, start_epoch + 1, cfg.epochs, run_dir)

    base_idx = np.arange(n) if subset is None else np.sort(np.asarray(subset, dtype=np.int64))
    tensor_names = [k for k, p in model.named_parameters() if p.requires_grad]
    numels = [int(p.numel()) for p in model.parameters() if p.requires_grad]
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        scores = None
        kept = np.zeros(n, dtype=bool)
        kept[base_idx] = True
        if method is not None or observe:
            def scoring(done: int, total: int, epoch: int = epoch) -> None:
                if progress is not None:
                    progress(f"{name} e{epoch + 1}/{cfg.epochs} scoring", (epoch + 0.5 * done / total) / cfg.epochs)

            need_si = observe or (method is not None and method.spec.value == "data_si")
            scores = score_samples(model, opt, train.x, train.y, data_si=need_si, progress=scoring)
            if method is not None:
                kept = select(method, scores)
        score_s = time.perf_counter() - t0
        scheduled = [g["lr"] for g in opt.param_groups]
        scale = float(kept.mean()) if (method is not None and cfg.lr_adjust) else 1.0
        for g, lr in zip(opt.param_groups, scheduled, strict=True):
            g["lr"] = lr * scale
        loss = _train_epoch(model, opt, train, np.flatnonzero(kept), cfg.batch_size, generator)
        for g, lr in zip(opt.param_groups, scheduled, strict=True):
            g["lr"] = lr
        sched.step()
        # values are kept as float32 in memory as on disk, so a resumed run equals an uninterrupted one
        si = scores.si.astype(np.float32) if scores is not None and scores.si is not None else None
        gradnorm = scores.gradnorm.astype(np.float32) if scores is not None else None
        record = EpochRecord(epoch, kept, scheduled[0] * scale, loss, evaluate(model, test),
                             time.perf_counter() - t0, score_s, si, gradnorm)
        records.append(record)
        if run_dir is not None and state_path is not None:
            record.save(run_dir / f"epoch_{epoch:03d}.npz")
            state = {"epoch": epoch, "model": model.state_dict(), "optimizer": opt.state_dict(),
                     "scheduler": sched.state_dict(), "generator": generator.get_state()}
            _atomic(state_path, lambda tmp, state=state: torch.save(state, tmp))
        if progress is not None:
            progress(f"{name} e{epoch + 1}/{cfg.epochs}", (epoch + 1) / cfg.epochs)

    result = RunResult(
        name=name, seed=seed, accuracy=records[-1].test_accuracy if records else evaluate(model, test),
        sample_epochs=int(sum(int(r.kept.sum()) for r in records)), full_sample_epochs=n * cfg.epochs,
        seconds=float(sum(r.seconds for r in records)), score_seconds=float(sum(r.score_seconds for r in records)),
        records=records, tensor_names=tensor_names, tensor_numels=numels,
    )
    if run_dir is not None:
        summary = result.summary()
        _atomic(run_dir / "result.json", lambda tmp: tmp.write_text(json.dumps(summary, indent=1)))
    return result


def _load_result(run_dir: Path, summary: dict) -> RunResult:
    n_epochs = len(summary["kept_per_epoch"])
    records = [EpochRecord.load(run_dir / f"epoch_{e:03d}.npz") for e in range(n_epochs)]
    fields = {k: summary[k] for k in ("name", "seed", "accuracy", "sample_epochs", "full_sample_epochs",
                                      "seconds", "score_seconds", "tensor_names", "tensor_numels")}
    return RunResult(records=records, **fields)
