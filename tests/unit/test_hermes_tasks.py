"""The Hermes task table and request validation."""

from __future__ import annotations

import pytest

from services.hermes.tasks import (
    NULL_TASK,
    NUM_MODALITIES,
    NUM_TASKS,
    TASK_NAMES,
    TASKS,
    Modality,
    TaskModalityError,
    modality_mismatches,
    parse_modality,
    parse_tasks,
    task_indices,
    tasks_of_modality,
)
from services.segmentation.labels import CLASS_NAMES


def test_table_is_consistent_and_reuses_the_segmentation_labels() -> None:
    assert [t.index for t in TASKS] == list(range(NUM_TASKS))
    assert len(set(TASK_NAMES)) == NUM_TASKS
    assert NULL_TASK == NUM_TASKS and NUM_MODALITIES == 2
    assert TASK_NAMES[: len(CLASS_NAMES) - 1] == CLASS_NAMES[1:]
    assert {"lung_tumour", "brain", "grey_matter", "white_matter", "brain_lesion"} <= set(TASK_NAMES)
    assert all(t.modality == Modality.CT for t in TASKS if t.name in CLASS_NAMES)
    assert {t.name for t in tasks_of_modality("mr")} == {"brain", "grey_matter", "white_matter", "brain_lesion"}


def test_parse_tasks_accepts_strings_and_lists_in_request_order() -> None:
    assert task_indices(parse_tasks(" spleen,liver ")) == [1, 0]
    assert task_indices(parse_tasks(["brain", "white_matter"], modality="MRI")) == [12, 14]
    assert task_indices(["liver", "lung_tumour"]) == [0, 11]


@pytest.mark.parametrize("request_, fragment", [
    ("", "empty task list"),
    ([], "empty task list"),
    (" , ", "empty task list"),
    ("liver,livr", "unknown task(s) 'livr'"),
    ("liver,liver", "more than once"),
])
def test_bad_requests_raise_value_errors_that_list_the_valid_tasks(request_: object, fragment: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_tasks(request_)  # type: ignore[arg-type]
    assert fragment in str(err.value)
    if "more than once" not in fragment:
        assert "valid tasks: liver, spleen" in str(err.value)


def test_modality_mismatch_is_an_error_or_a_list_for_a_warning() -> None:
    with pytest.raises(TaskModalityError, match=r"brain \(MR\).*CT volume"):
        parse_tasks("liver,brain", modality="CT")
    assert [t.name for t in modality_mismatches(parse_tasks("liver,brain"), "CT")] == ["brain"]
    with pytest.raises(ValueError, match="unknown modality 'PET'"):
        parse_modality("PET")
