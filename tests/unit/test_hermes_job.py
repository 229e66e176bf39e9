"""The Hermes job at tiny size: request checks (the gateway's 422s and the worker's typed errors), results on
the input grid, and the same masks as `HermesSegmenter` on the same network (no Triton, random weights)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from services.common.job_io import JobInputError
from services.common.volume import Volume, read_volume, write_volume
from services.hermes.export_specs import HermesExport, trained_tasks
from services.hermes.inference import HermesModel, HermesSegmenter
from services.hermes.job import ServedHermes, run_hermes_segmentation, task_mask_name
from services.hermes.network import HermesConfig, HermesR
from services.hermes.request import (
    EMPTY_KIND,
    MISMATCH_KIND,
    MODALITY_REQUIRED_KIND,
    REPEATED_KIND,
    UNKNOWN_KIND,
    UNKNOWN_MODALITY_KIND,
    RequestError,
    check_tasks,
    parse_modality_field,
    resolve_modality,
    zip_modality,
)
from services.hermes.tasks import TASK_NAMES, Modality

TINY = HermesConfig(channels=(8, 8, 16, 16, 16), fusion_blocks=(1, 1, 1, 1, 1), tokens_per_modality=2, head_dim=8)
PATCH = (16, 32, 32)
FACTS = {"name": "hermes_test", "version": "1", "sha256": "0" * 64}


# ---- request checks: what the gateway answers 422 with, and the job fails with ----------------------------


@pytest.mark.parametrize(("tasks", "modality", "kind", "says"), [
    ("", "CT", EMPTY_KIND, "empty"),
    (" , ,", None, EMPTY_KIND, "valid tasks: liver"),
    ("liver,livr", "CT", UNKNOWN_KIND, "'livr' (did you mean liver?)"),
    ("tumour", None, UNKNOWN_KIND, "valid tasks: " + ", ".join(TASK_NAMES)),
    ("liver,brain", "CT", MISMATCH_KIND, "brain (MR)"),
    ("brain", "CT", MISMATCH_KIND, "CT tasks: liver"),
    ("liver", "MR", MISMATCH_KIND, "MR tasks: brain, grey_matter, white_matter, brain_lesion"),
    ("liver,liver", "CT", REPEATED_KIND, "more than once"),
])
def test_bad_task_lists_say_what_to_fix(tasks: str, modality: str | None, kind: str, says: str) -> None:
    with pytest.raises(RequestError) as refused:
        check_tasks(tasks, modality)
    assert refused.value.kind == kind and says in str(refused.value), str(refused.value)
    assert refused.value.extra["valid_tasks"]  # the problem body lists what may be asked


def test_task_lists_parse_in_request_order() -> None:
    assert [t.name for t in check_tasks(" Spleen, liver ", "CT")] == ["spleen", "liver"]
    assert [t.name for t in check_tasks(["brain", "white_matter"], "mri")] == ["brain", "white_matter"]
    assert [t.name for t in check_tasks("liver,brain", None)] == ["liver", "brain"]  # modality not known yet


def test_modality_from_the_request_or_the_dicom_series() -> None:
    assert parse_modality_field(None) is None and parse_modality_field(" ") is None
    assert parse_modality_field("mri") == Modality.MR
    with pytest.raises(RequestError) as bad:
        parse_modality_field("PET")
    assert bad.value.kind == UNKNOWN_MODALITY_KIND
    assert resolve_modality("CT", "MR") == Modality.CT  # what the request says wins (the input check follows)
    assert resolve_modality(None, "MR") == Modality.MR
    for dicom, says in ((None, "send modality=CT or modality=MR"), ("PT", "Modality is 'PT'")):
        with pytest.raises(RequestError) as missing:
            resolve_modality(None, dicom)
        assert missing.value.kind == MODALITY_REQUIRED_KIND and says in str(missing.value)


# ---- the job ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def net() -> HermesExport:
    torch.manual_seed(0)
    return HermesExport(HermesR(TINY)).eval()


def _predict(net: HermesExport):
    """The job's predictor contract, answered by the torch network (the worker's answers through Triton)."""
    calls: list[tuple[int, int, int]] = []

    @torch.no_grad()
    def predict(patches: np.ndarray, tasks: np.ndarray, modality: int) -> np.ndarray:
        assert patches.dtype == np.float32 and patches.shape[1:] == (1, *PATCH) and tasks.dtype == np.int64
        calls.append((len(patches), len(tasks), modality))
        rows = torch.from_numpy(np.tile(tasks, (len(patches), 1)))
        seg, _ = net(torch.from_numpy(patches), rows, torch.full((len(patches), 1), modality))
        return seg.numpy()

    predict.calls = calls  # type: ignore[attr-defined]
    return predict


def _oblique(values: tuple[float, float], seed: int) -> Volume:
    """Anisotropic and rotated (20° about z, 10° about x), with a brighter block inside."""
    rotation = sitk.Euler3DTransform()
    rotation.SetRotation(np.deg2rad(10.0), 0.0, np.deg2rad(20.0))
    rng = np.random.default_rng(seed)
    array = rng.uniform(*values, (14, 30, 26)).astype(np.float32)
    array[4:10, 8:20, 6:18] += 0.5 * (values[1] - values[0])
    return Volume(array, (1.7, 2.3, 4.0), (-31.5, 12.25, 50.0), tuple(float(v) for v in rotation.GetMatrix()))


@pytest.mark.parametrize(("modality", "values", "tasks"), [
    ("CT", (-1000.0, 400.0), "spleen,liver"),
    ("MR", (0.0, 800.0), "brain,grey_matter"),
])
def test_masks_lie_on_the_input_grid_and_match_the_segmenter(net: HermesExport, tmp_path: Path, modality: str,
                                                             values: tuple[float, float], tasks: str) -> None:
    volume = _oblique(values, seed=len(modality))
    upload = write_volume(volume, tmp_path / "in.nii.gz")
    predict = _predict(net)
    stages: list[str] = []
    summary = run_hermes_segmentation(upload, tmp_path / "out", FACTS, predict, trained_tasks(),
                                      lambda stage, f: stages.append(stage), tasks=tasks, modality=modality,
                                      patch_size=PATCH)
    names = tasks.split(",")
    label_map = read_volume(tmp_path / "out" / "mask.nii.gz")
    masks = {n: read_volume(tmp_path / "out" / task_mask_name(n)) for n in names}
    for out in (label_map, *masks.values()):
        assert out.same_grid(volume, atol=1e-6) and out.array.dtype == np.uint8

    # the same network in-process through HermesSegmenter on the uploaded file: the same masks and label map
    model = HermesModel(net.net, tuple(range(len(TASK_NAMES))))
    reference = HermesSegmenter(patch_size=PATCH)(read_volume(upload), model, tasks, modality)
    assert np.array_equal(label_map.array, reference.label_map().array)
    for n in names:
        assert np.array_equal(masks[n].array, reference.mask(n).array)

    # the "modality" policy: every trained task of the modality runs, the requested ones come back
    run = trained_tasks()[modality]
    assert {(t, m) for _, t, m in predict.calls} == {(len(run), 0 if modality == "CT" else 1)}
    assert summary["tasks"] == names and summary["run_tasks"] == run
    assert [s["name"] for s in summary["structures"]] == names
    assert [s["voxels"] for s in summary["structures"]] == [int(masks[n].array.sum()) for n in names]
    assert summary["labels"] == {"0": "background", "1": names[0], "2": names[1]}
    assert summary["modality"]["value"] == modality and summary["model"] == FACTS
    assert set(summary["artifacts"]) >= {"mask.nii.gz", "summary.json", "preview.png", *map(task_mask_name, names)}
    assert stages[0] == "loading" and stages[-1] == "done" and "inference" in stages


def test_refusals_are_typed(net: HermesExport, tmp_path: Path) -> None:
    ct = write_volume(_oblique((-1000.0, 400.0), seed=1), tmp_path / "ct.nii.gz")
    mr = write_volume(_oblique((0.0, 800.0), seed=2), tmp_path / "mr.nii.gz")
    cases = [
        (ct, "liver", None, MODALITY_REQUIRED_KIND),  # a file carries no modality
        (ct, "", "CT", EMPTY_KIND),
        (ct, "liver,kidney", "CT", UNKNOWN_KIND),
        (ct, "liver,brain", "CT", MISMATCH_KIND),
        (mr, "liver", "CT", "not-ct"),  # no air in HU: not a CT
        (ct, "brain", "MR", "not-mr"),
    ]
    for upload, tasks, modality, kind in cases:
        with pytest.raises(JobInputError) as refused:
            run_hermes_segmentation(upload, tmp_path / "out", FACTS, _predict(net), trained_tasks(), tasks=tasks,
                                    modality=modality, patch_size=PATCH)
        assert refused.value.kind == kind, (tasks, modality, str(refused.value))
    only_ct = {"CT": ["liver", "spleen"], "MR": []}
    with pytest.raises(JobInputError) as unserved:
        run_hermes_segmentation(ct, tmp_path / "out", FACTS, _predict(net), only_ct, tasks="heart", modality="CT",
                                patch_size=PATCH)
    assert unserved.value.kind == "task-not-served" and "liver, spleen" in str(unserved.value)


def test_a_dicom_series_gives_its_modality(net: HermesExport, tmp_path: Path) -> None:
    from services.common.dicom_series import write_ct_series, zip_files

    ct = Volume(np.random.default_rng(0).uniform(-1000, 400, (6, 24, 20)).astype(np.int16), (1.5, 1.5, 4.0))
    series = zip_files(write_ct_series(ct, tmp_path / "series"), tmp_path / "series.zip")
    assert zip_modality(series) == "CT" and zip_modality(tmp_path / "series" / "missing.zip") is None
    with pytest.raises(JobInputError) as refused:
        run_hermes_segmentation(series, tmp_path / "a", FACTS, _predict(net), trained_tasks(), tasks="brain",
                                patch_size=PATCH)
    assert refused.value.kind == MISMATCH_KIND
    summary = run_hermes_segmentation(series, tmp_path / "b", FACTS, _predict(net), trained_tasks(), tasks="liver",
                                      patch_size=PATCH)
    assert summary["modality"] == {"value": "CT", "from": "dicom", "prior": "CT"}
    assert summary["input"]["format"] == "dicom" and read_volume(tmp_path / "b" / "mask.nii.gz").shape == ct.shape


def test_served_model_adapter_knows_the_trained_tasks() -> None:
    served = ServedHermes.from_trained(lambda p, t, m: p, {"CT": ["spleen", "liver"], "MR": ["brain"]})
    assert served.tasks == (0, 1, 12) and served.has_priors
