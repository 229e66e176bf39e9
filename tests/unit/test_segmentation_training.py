"""Loss, the user-dataset checker, and a one-iteration fine-tune on a tiny MSD-layout dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from services.common.volume import Volume, write_volume
from services.segmentation import checkpoints
from services.segmentation.pctnet import PCTNetConfig
from services.segmentation.train import DatasetLayoutError, dice_ce_loss, finetune, main, verify_dataset

TINY = PCTNetConfig(input_size=(8, 32, 32), feature_channels=(4, 8, 16, 16, 16), num_heads=(1, 1, 1),
                    window_size=(2, 2, 2), drop_path=0.0, dropout=(0.0,) * 5)


def test_loss_is_small_for_a_confident_correct_prediction() -> None:
    target = torch.randint(0, 3, (2, 4, 8, 8))
    good = torch.nn.functional.one_hot(target, 3).movedim(-1, 1).float() * 20
    bad = torch.zeros_like(good)
    assert dice_ce_loss(good, target) < 0.01 < dice_ce_loss(bad, target)


def _dataset(root: Path, n: int = 2, nnunet: bool = True) -> Path:
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        hu = rng.normal(0, 50, (12, 40, 40)).astype(np.float32)
        lab = np.zeros(hu.shape, np.uint8)
        lab[3:9, 10:30, 10:30] = 1
        hu[lab == 1] += 100
        suffix = "_0000" if nnunet else ""
        write_volume(Volume(hu, (3.0, 3.0, 3.0)), root / "imagesTr" / f"case{i}{suffix}.nii.gz")
        write_volume(Volume(lab, (3.0, 3.0, 3.0)), root / "labelsTr" / f"case{i}.nii.gz")
    labels = {"background": 0, "organ": 1} if nnunet else {"0": "background", "1": "organ"}
    meta = {"labels": labels, "channel_names": {"0": "CT"}, "numTraining": n, "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


@pytest.mark.parametrize("nnunet", [True, False])
def test_verify_dataset_accepts_both_layouts(tmp_path: Path, nnunet: bool) -> None:
    ds = verify_dataset(_dataset(tmp_path / "ds", nnunet=nnunet))
    assert ds.classes == {0: "background", 1: "organ"} and len(ds.cases) == 2


def test_verify_dataset_reports_every_problem_at_once(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "ds", n=2)
    (root / "imagesTr" / "case1_0000.nii.gz").unlink()
    write_volume(Volume(np.full((12, 40, 40), 7, np.uint8), (3.0, 3.0, 3.0)), root / "labelsTr" / "case0.nii.gz")
    write_volume(Volume(np.zeros((4, 4, 4), np.float32), (1.0, 1.0, 1.0)), root / "imagesTr" / "extra_0000.nii.gz")
    with pytest.raises(DatasetLayoutError) as err:
        verify_dataset(root)
    msg = str(err.value)
    assert "case1: no image" in msg and "extra_0000.nii.gz: image without a label" in msg
    assert "label values [7]" in msg and "numTraining is 2 but 1" in msg


def test_verify_dataset_missing_everything(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetLayoutError, match="dataset.json is missing") as err:
        verify_dataset(tmp_path / "empty")
    assert "imagesTr/ is missing" in str(err.value) and "labelsTr/ is missing" in str(err.value)


def test_finetune_on_user_dataset_writes_checkpoint_folder(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "ds")
    weights = finetune(tmp_path / "run", None, iterations=2, seed=3, dataset_dir=root, max_seconds=600,
                       batch_size=1, threads=1, model_config=TINY, amp=False)
    config = json.loads((weights.parent / "config.json").read_text())
    metrics = json.loads((weights.parent / "metrics.json").read_text())
    assert config["classes"] == ["background", "organ"] and config["model"]["out_channels"] == 2
    assert metrics["iterations"] == 2 and metrics["stopped_by"] == "iterations"
    # what a re-run needs: the iterations done, the seed, and which data (here a sha256 over the user's folder)
    assert config["iterations"] == 2 and config["seed"] == 3
    assert config["budget"] == {"iterations": 2, "max_seconds": 600, "stopped_by": "iterations"}
    assert len(config["data_version"]["user_dataset"]["sha256"]) == 64
    model = checkpoints.load_model(weights.parent)
    # init from that checkpoint: everything but nothing is skipped (same class count)
    loaded, skipped = checkpoints.load_matching(model, weights.parent)
    assert loaded and not skipped


def test_training_command_takes_iterations_and_keeps_seconds_as_an_upper_bound(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):  # a wall-clock budget alone is not reproducible
        main(["segmentation", "--out", str(tmp_path / "run"), "--seconds", "6000"])
