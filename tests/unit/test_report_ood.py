"""What the report model is for (services/report/ood.py): the DICOM header's body part / view / modality, and the
image's distance to the training images with its threshold calibrated on validation images."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from services.report import ood, serving
from services.report.ood import OODModel, scope_reasons
from tests.cr_cases import real_cr_bytes


@pytest.mark.parametrize(("part", "view", "modality", "declined"), [
    ("CHEST", "PA", "CR", False), ("THORAX", "AP", "DX", False), ("", "", "", False), ("chest", "pa", "cr", False),
    ("EXTREMITY", "PA", "CR", True), ("SKULL", "", "CR", True), ("HAND", "", "DX", True),
    ("CHEST", "LL", "CR", True), ("CHEST", "LATERAL", "DX", True),
    ("CHEST", "", "CT", True), ("", "", "MG", True), ("CHEST", "PA", "OT", False),
])
def test_scope_reasons(part: str, view: str, modality: str, declined: bool) -> None:
    assert bool(scope_reasons(part, view, modality)) == declined


def test_the_real_cr_is_a_chest_and_as_a_limb_is_not() -> None:
    scope = ood.input_scope(real_cr_bytes(), "dicom")
    assert scope.chest is True and scope.body_part == "CHEST" and scope.view == "PA" and scope.modality == "CR"
    limb = ood.input_scope(real_cr_bytes(BodyPartExamined="EXTREMITY"), "dicom")
    assert limb.chest is False and limb.reasons == ("BodyPartExamined is 'EXTREMITY', not CHEST",)
    detail = ood.scope_detail(limb.reasons)
    assert "EXTREMITY" in detail and "allow_non_chest=true" in detail and "frontal (PA or AP) chest" in detail


def test_png_has_no_header_but_a_declared_lateral_view_is_a_reason() -> None:
    assert ood.input_scope(b"\x89PNG", "png").chest is None
    lateral = ood.input_scope(b"\x89PNG", "png", "LATERAL")
    assert lateral.chest is False and "LATERAL" in lateral.reasons[0]
    assert ood.input_scope(b"\x89PNG", "png", "PA").reasons == ()


def test_ppca_score_is_mahalanobis_under_the_ppca_covariance() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 12)) @ rng.normal(size=(12, 12)) + 3.0
    model = OODModel.fit(x, k=4)
    w, lam, s2 = model.components, model.variances, model.residual_variance
    cov = w.T @ np.diag(lam) @ w + s2 * (np.eye(12) - w.T @ w)
    q = rng.normal(size=(5, 12)) * 2 + 3.0
    d = q - model.mean
    expected = np.einsum("ni,ij,nj->n", d, np.linalg.inv(cov), d) / 12
    np.testing.assert_allclose(model.score(q), expected, rtol=1e-8)
    assert 0.7 < np.median(model.score(x)) < 1.1  # about 1 for the training data


def test_threshold_is_the_validation_quantile_and_far_points_are_out() -> None:
    rng = np.random.default_rng(1)
    train, val = rng.normal(size=(800, 20)), rng.normal(size=(400, 20))
    model = OODModel.fit(train, k=5).calibrated(val, 0.99)
    assert model.threshold == pytest.approx(np.quantile(model.score(val), 0.99))
    assert model.in_distribution(val).mean() == pytest.approx(0.99, abs=0.005)
    assert not model.in_distribution(rng.normal(size=(50, 20)) + 4).any()
    again = OODModel.from_json(json.loads(json.dumps(model.to_json())))
    np.testing.assert_allclose(again.score(val), model.score(val), rtol=1e-5)  # stored as float32
    assert again.threshold == model.threshold


def test_fit_needs_more_images_than_components() -> None:
    with pytest.raises(ValueError, match="more than 16"):
        OODModel.fit(np.zeros((10, 256)))


def test_layout_box_means() -> None:
    image = np.zeros((1, 1, 128, 128))
    image[..., :64] = 1.0
    f = ood.layout(image)
    assert f.shape == (1, 256) and f.reshape(16, 16)[:, :8].min() == 1 and f.reshape(16, 16)[:, 8:].max() == 0
    with pytest.raises(ValueError):
        ood.layout(np.zeros((1, 100, 100)))


def test_committed_calibration_belongs_to_the_served_checkpoint() -> None:
    stored = json.loads(ood.ood_path().read_text())
    assert stored["checkpoint_sha256"] == hashlib.sha256(serving.checkpoint_path().read_bytes()).hexdigest()
    assert stored["command"] == "python -m services.report.ood"
    assert stored["rates"]["test"]["rate"] <= 0.03  # the false-reject rate on the chest test split, as documented
    assert ood.load() is not None and np.isfinite(ood.load().threshold)


def test_held_out_render_is_in_and_a_limb_is_out() -> None:
    from services.report import drr
    from services.report.data import EVAL_SEEDS
    from services.report.images import preprocess

    chest = drr.render(drr.load_phantom("lung1"), ("pleural_effusion",), seed=EVAL_SEEDS + 777)
    assert ood.assess(preprocess(chest)).in_distribution is True
    rng = np.random.default_rng(5)
    limb = ood._render_volume(ood._limb_volume(rng), rng)
    verdict = ood.assess(preprocess(limb))
    assert verdict.in_distribution is False and verdict.score > verdict.threshold


def test_without_calibration_nothing_is_claimed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ood, "load", lambda: None)
    assert ood.assess(np.zeros((1, 1, 128, 128))) == ood.Distribution(None, None, None)
