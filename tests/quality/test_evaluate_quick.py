"""Model-quality regression guard: `medstack evaluate --quick` for every registered family.

Each family's quick slice is rerun and compared with the quick figures recorded by the last full
`medstack evaluate` (docs/results/<family>.json); a figure that falls by more than the family's
tolerance fails. Nothing here compares with a baseline or asserts a time.
"""

from __future__ import annotations

import pytest

from medstack import evaluate

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("family", list(evaluate.registry()))
def test_quick_slice_holds_the_recorded_quality(family: str) -> None:
    evaluation = evaluate.registry()[family]
    assert evaluate.recorded(family) is not None, f"run `medstack evaluate {family}` and commit its results"
    lines: list[str] = []
    found = evaluate.run_quick(evaluation, lines.append)
    assert not found, "\n".join(map(str, found))


def test_every_recorded_result_has_the_fields_reviewers_read() -> None:
    for family in evaluate.registry():
        document = evaluate.recorded(family)
        assert document is not None, family
        assert {"family", "command", "git_commit", "data", "seeds", "comparisons", "quick"} <= set(document)
        assert document["comparisons"], f"{family}: no comparison recorded"
        for comparison in document["comparisons"]:
            assert {"name", "metric", "higher_is_better", "ours", "baseline_name", "baseline", "seeds",
                    "ci95"} <= set(comparison), (family, comparison)
