"""The DRR renderer's geometry and finding insertion, on a small synthetic phantom (no dataset needed)."""

from __future__ import annotations

import numpy as np
import pytest

from services.report import drr


def phantom(shape: tuple[int, int, int] = (60, 48, 64)) -> drr.Phantom:
    """Water body, two air 'lungs' (x < 32 is patient right in LPS), a soft-tissue 'heart' low and left."""
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    body = ((y - 24) / 20) ** 2 + ((x - 32) / 30) ** 2 <= 1
    body = np.broadcast_to(body, shape).copy()
    lung_r = (((z - 32) / 22) ** 2 + ((y - 24) / 12) ** 2 + ((x - 18) / 10) ** 2) <= 1
    lung_l = (((z - 32) / 22) ** 2 + ((y - 24) / 12) ** 2 + ((x - 46) / 10) ** 2) <= 1
    heart = (((z - 20) / 8) ** 2 + ((y - 20) / 7) ** 2 + ((x - 36) / 7) ** 2) <= 1
    hu = np.where(body, 0.0, -1000.0).astype(np.float32)
    hu[lung_r | lung_l] = -850.0
    hu[heart] = 40.0
    ribs = (np.abs(z - 40) <= 1) & body & ~(lung_r | lung_l) & (np.abs(x - 32) > 24)
    hu[ribs] = 700.0
    return drr.Phantom("synthetic", hu, lung_l & ~heart, lung_r & ~heart, heart & ~(lung_l | lung_r), ribs, body)


def test_projection_orientation_head_up_patient_right_on_the_left() -> None:
    p = phantom()
    hu = p.hu.copy()
    hu[50:54, 20:28, 44:50] = 2000.0  # dense block: superior and on the patient's left
    centre, half = drr.field_of_view(p)
    image = drr.project(hu, centre, half, drr.Pose(), size=64)
    row, col = np.unravel_index(np.argmax(image), image.shape)
    assert row < 32, "superior structures must be at the top"
    assert col > 32, "the patient's left must be on the viewer's right (PA display)"


def test_magnification_and_rotation_move_the_projection() -> None:
    p = phantom()
    centre, half = drr.field_of_view(p)
    base = drr.project(p.hu, centre, half, drr.Pose(), size=64)
    big = drr.project(p.hu, centre, half, drr.Pose(magnification=1.3), size=64)
    rolled = drr.project(p.hu, centre, half, drr.Pose(roll_deg=8), size=64)
    body_width = lambda img: int((img[32] > 0.5 * img.max()).sum())  # noqa: E731
    assert body_width(big) > body_width(base)
    assert not np.allclose(rolled, base)
    # line integral of water through the body centre: path length × mu_water (≈ 40 voxels × 2.5 mm × 0.02/mm)
    assert 0.5 < base.max() < 6.0


@pytest.mark.parametrize("finding", ["cardiomegaly", "pleural_effusion", "nodule_mass", "opacity_consolidation",
                                     "atelectasis", "pneumothorax", "emphysema", "fracture", "support_devices"])
def test_each_finding_changes_the_ct_where_expected(finding: str) -> None:
    p = phantom()
    hu = drr.insert_findings(p, (finding,), np.random.default_rng(1))
    changed = hu != p.hu
    assert changed.any()
    lungs = p.lungs
    if finding == "cardiomegaly":
        width = lambda mask: np.ptp(np.nonzero(mask)[2])  # noqa: E731
        assert width(hu >= 30) >= 1.15 * width(p.heart)  # wider heart (x is left-right)
        assert (changed & ~p.heart).sum() > 0.3 * p.heart.sum()
    elif finding == "pleural_effusion":
        zz = np.nonzero(changed & lungs)[0]
        assert zz.max() < np.nonzero(lungs)[0].mean()  # fluid at the bases
        assert (hu[changed & lungs] > -100).all()
    elif finding == "pneumothorax":
        assert (hu[lungs] <= -999).any()  # free air without lung markings
    elif finding == "emphysema":
        assert hu[lungs].mean() < p.hu[lungs].mean()
    elif finding == "support_devices":
        assert hu.max() >= 1500
    elif finding in ("nodule_mass", "opacity_consolidation", "atelectasis"):
        assert hu[changed & lungs].mean() > -400


def test_render_is_seeded_and_normalised() -> None:
    p = phantom()
    a = drr.render(p, ("cardiomegaly",), seed=3, size=48)
    b = drr.render(p, ("cardiomegaly",), seed=3, size=48)
    c = drr.render(p, ("cardiomegaly",), seed=4, size=48)
    assert a.shape == (48, 48) and a.dtype == np.float32
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.min() >= 0 and a.max() <= 1
    with pytest.raises(ValueError, match="unknown findings"):
        drr.insert_findings(p, ("dragon",), np.random.default_rng(0))
