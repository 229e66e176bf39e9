"""Routing rules of the DICOM listener: which job a received series becomes (docs/pacs.md).

Rules are configuration (``MEDSTACK_LISTENER_ROUTES``, `core.settings.PacsRoute`), tried in order; the
first whose every ``match`` key holds one of its values (DICOM keywords, case-insensitive, surrounding
spaces ignored) wins. A series no rule matches is kept aside, never guessed at.

    [{"name": "ct-organs", "match": {"Modality": ["CT"], "BodyPartExamined": ["CHEST", "ABDOMEN"]},
      "capability": "segmentation", "model": "segmentation_pctnet", "destination": "pacs"}]
"""

from __future__ import annotations

from collections.abc import Sequence

from pydicom.datadict import keyword_dict
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from core.settings import PacsRoute


def check_routes(routes: Sequence[PacsRoute]) -> None:
    """Refuse a rule that names an attribute DICOM does not have (a typo would silently never match)."""
    for route in routes:
        unknown = [key for key in route.match if key not in keyword_dict]
        if unknown:
            raise ValueError(f"route {route.name!r} matches on {', '.join(unknown)}, which are not DICOM keywords "
                             "(e.g. Modality, BodyPartExamined, SeriesDescription)")


def _value(dataset: Dataset, keyword: str) -> list[str]:
    value = dataset.get(keyword)
    if value is None:
        return []
    values = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
    return [str(v).strip().upper() for v in values]


def matches(route: PacsRoute, dataset: Dataset) -> bool:
    return all(
        any(v.strip().upper() in _value(dataset, keyword) for v in accepted)
        for keyword, accepted in route.match.items()
    )


def route_for(routes: Sequence[PacsRoute], dataset: Dataset) -> PacsRoute | None:
    """The first rule ``dataset`` (any instance of the series) matches, or None."""
    return next((route for route in routes if matches(route, dataset)), None)
