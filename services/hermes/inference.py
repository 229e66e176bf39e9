"""Whole-volume Hermes inference: model grid → sliding window → per-task sigmoid → input grid.

    model = HermesModel.from_checkpoint(".cache/hermes_runs/hermes_s0")
    result = HermesSegmenter()(ct, model, "liver,spleen", "CT")
    result.probability("liver")     # float32 Volume on ct's own grid (linear resampling)
    result.mask("liver")            # uint8 0/1 Volume on ct's grid (probability > 0.5)
    result.label_map()              # uint8 Volume on ct's grid: i + 1 = i-th requested task, 0 = none

Preprocessing is the training data's (services/hermes/data.py): a CT goes through the segmentation
family's `to_model_grid` (LPS, 3 mm, HU window → [-1, 1]), an MR through `mr_to_grid`; the window is
the common `SlidingWindow` (64³, half-window overlap, Gaussian blending of the logits, batches of 2,
pad value -1), then a sigmoid per task. Results go back onto the input grid with `resample_like`, so
shape, spacing, origin and direction are the input's.

**Task-list policy** (``POLICIES``; default ``"modality"``). Hermes-R's image features attend to every
requested task token, so a task's mask depends on which other tasks are requested with it. With
``"modality"`` the network always runs the full list of tasks the checkpoint was trained on for the
volume's modality (task-index order) and the requested channels are returned: a task's mask no longer
depends on the request, and the token set is the one every training sample of that modality was
presented with (services/hermes/train.py, ``task_context="modality"``). ``"requested"`` runs exactly
the requested list (upstream's behaviour, kept for comparison; it costs less only when few tasks are
asked for). The multi-head baselines compute every channel anyway: for them both policies agree.

The label map gives each voxel the most probable requested task above the threshold; tasks may
overlap (brain contains grey matter), so ask for masks when they do. Requesting a task of the other
modality raises `TaskModalityError`; a task the checkpoint was not trained on raises ValueError.
``use_modality_prior=False`` feeds the "unknown" modality token (-1) instead of the volume's modality
(preprocessing still needs the modality).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from services.common.sliding_window import Predictor, Progress, SlidingWindow
from services.common.volume import Volume, resample_like
from services.hermes.data import PATCH, mr_to_grid
from services.hermes.network import HermesR, select_tasks
from services.hermes.tasks import MODALITIES, TASK_NAMES, TASKS, Modality, Task, parse_modality, parse_tasks
from services.segmentation.preprocessing import SPEC, to_model_grid

__all__ = ["POLICIES", "HermesModel", "HermesResult", "HermesSegmenter", "to_grid", "sigmoid"]

POLICIES = ("modality", "requested")


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-np.clip(logits, -60.0, 60.0)))).astype(np.float32)


def to_grid(volume: Volume, modality: str | Modality) -> Volume:
    """The input on the common model grid, normalised as the training data of its modality."""
    return to_model_grid(volume) if parse_modality(modality) == Modality.CT else mr_to_grid(volume)


@dataclass(frozen=True)
class HermesModel:
    """A trained network with its trained ``tasks`` (task indices; a multi-head network's output
    channels in this order)."""

    net: torch.nn.Module
    tasks: tuple[int, ...]

    @classmethod
    def from_checkpoint(cls, folder: str | Path) -> HermesModel:
        from services.hermes.train import load_model

        net, cfg = load_model(folder)
        return cls(net, tuple(TASK_NAMES.index(n) for n in cfg["tasks"]))

    @property
    def has_priors(self) -> bool:
        return isinstance(self.net, HermesR)

    def predictor(self, tasks: Sequence[int], modality: int) -> Predictor:
        """(N, 1, d, h, w) float32 patches → (N, T, d, h, w) logits of ``tasks`` (task indices)."""
        net = self.net.eval()
        missing = [TASK_NAMES[t] for t in tasks if t not in self.tasks]
        if missing:
            raise ValueError(f"the checkpoint was not trained for task(s) {', '.join(missing)}; "
                             f"trained: {', '.join(TASK_NAMES[t] for t in self.tasks)}")
        if self.has_priors:
            index = torch.tensor([list(tasks)], dtype=torch.int64)
        else:
            index = torch.tensor([[self.tasks.index(t) for t in tasks]], dtype=torch.int64)

        @torch.no_grad()
        def predict(batch: np.ndarray) -> np.ndarray:
            image = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
            rows = index.expand(image.shape[0], -1)
            if self.has_priors:
                seg, _ = net(image, rows, torch.full((image.shape[0],), modality, dtype=torch.int64))
            else:
                seg = select_tasks(net(image), rows)
            return seg.float().numpy()

        return predict


@dataclass
class HermesResult:
    """Probabilities (T, z, y, x) of the requested ``tasks`` (request order) on the model ``grid``, and
    their views on the ``original`` input grid."""

    tasks: tuple[Task, ...]
    grid: Volume
    probabilities: np.ndarray
    original: Volume
    run_tasks: tuple[Task, ...]

    def _position(self, task: str | Task) -> int:
        name = task.name if isinstance(task, Task) else task
        names = [t.name for t in self.tasks]
        if name not in names:
            raise ValueError(f"task {name!r} was not requested; requested: {', '.join(names)}")
        return names.index(name)

    def probability(self, task: str | Task) -> Volume:
        """The task's probability map on the input grid (linear resampling; 0 outside the model grid)."""
        prob = self.grid.with_array(self.probabilities[self._position(task)])
        out = resample_like(prob, self.original, "linear", default_value=0.0)
        return out.with_array(out.array.astype(np.float32))

    def mask(self, task: str | Task, threshold: float = 0.5) -> Volume:
        prob = self.probability(task)
        return prob.with_array((prob.array > threshold).astype(np.uint8))

    def label_map(self, threshold: float = 0.5) -> Volume:
        """uint8 on the input grid: i + 1 where the i-th requested task is the most probable one above
        ``threshold``, 0 elsewhere. One task's map on the input grid is held at a time."""
        best = np.full(self.original.shape, threshold, np.float32)
        labels = np.zeros(self.original.shape, np.uint8)
        for i, task in enumerate(self.tasks):
            prob = self.probability(task).array
            better = prob > best
            labels[better] = i + 1
            best[better] = prob[better]
        return self.original.with_array(labels)


@dataclass(frozen=True)
class HermesSegmenter:
    """Settings of whole-volume inference (the module docstring gives the policy)."""

    patch_size: tuple[int, int, int] = PATCH
    overlap: float = 0.5
    batch_size: int = 2
    policy: str = "modality"
    use_modality_prior: bool = True

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"unknown task-list policy {self.policy!r}; policies: {', '.join(POLICIES)}")

    def run_list(self, model: HermesModel, requested: Sequence[Task], modality: Modality) -> tuple[Task, ...]:
        """The task list the network runs for a request."""
        if self.policy == "requested" or not model.has_priors:
            return tuple(requested)
        trained = [TASKS[t] for t in sorted(model.tasks) if TASKS[t].modality == modality]
        missing = [t.name for t in requested if t not in trained]
        if missing:
            raise ValueError(f"the checkpoint was not trained for task(s) {', '.join(missing)}; trained "
                             f"{modality} tasks: {', '.join(t.name for t in trained)}")
        return tuple(trained)

    def __call__(self, volume: Volume, model: HermesModel, tasks: str | Sequence[str], modality: str | Modality,
                 progress: Progress | None = None) -> HermesResult:
        mod = parse_modality(modality)
        requested = parse_tasks(tasks, modality=mod)
        run = self.run_list(model, requested, mod)
        grid = to_grid(volume, mod)
        probabilities = self.grid_probabilities(grid.array, model, run, mod, progress)
        keep = [run.index(t) for t in requested]
        return HermesResult(requested, grid, probabilities[keep], volume, run)

    def grid_probabilities(self, image: np.ndarray, model: HermesModel, run: Sequence[Task], modality: Modality,
                           progress: Progress | None = None) -> np.ndarray:
        """Sigmoid probabilities (len(run), z, y, x) of an image already on the model grid."""
        modality_index = MODALITIES.index(modality) if self.use_modality_prior else -1
        predict: Callable[[np.ndarray], np.ndarray] = model.predictor([t.index for t in run], modality_index)
        window = SlidingWindow(roi_size=self.patch_size, overlap=self.overlap, batch_size=self.batch_size,
                               gaussian=True, pad_value=SPEC.pad_value)
        return sigmoid(window(image, predict, progress))  # Gaussian-blended logits, then the sigmoid
