"""`medstack evaluate valuation`: comparisons paired by seed from a job report."""

from __future__ import annotations

import pytest

from services.valuation.evaluation import comparisons_from_report


def _run(per_seed: list[float], kept: float) -> dict:
    return {"accuracy": {"per_seed": per_seed, "mean": sum(per_seed) / len(per_seed)},
            "kept_fraction": {"mean": kept}}


REPORT = {
    "seeds": [0, 1, 2],
    "runs": {
        "full": _run([0.98, 0.97, 0.99], 1.0),
        "online_gradnorm": _run([0.97, 0.97, 0.95], 0.42),
        "coreset": _run([0.90, 0.85, 0.95], 0.3),
        "random_subset": _run([0.95, 0.96, 0.94], 0.3),
    },
}


def test_coreset_against_random_subset_and_online_against_full() -> None:
    found = {c.name: c for c in comparisons_from_report("digits", REPORT)}
    assert set(found) == {"digits: coreset", "digits: online selection, gradient norm"}
    core = found["digits: coreset"]
    assert core.ours == pytest.approx(0.9) and core.baseline == pytest.approx(0.95)
    assert core.seeds == [0, 1, 2] and not core.ours_wins
    assert core.ci95 is not None and core.ci95[0] <= -0.05 <= core.ci95[1]
    online = found["digits: online selection, gradient norm"]
    assert online.baseline == pytest.approx(0.98) and online.ours == pytest.approx(0.9633, abs=1e-4)
    assert "42.0 %" in online.samples and "3 seeds (paired)" in online.samples
