"""Every model MedStack serves, by Triton model name. ``medstack export`` walks this table.

A family registers its models in ``services/<family>/export_specs.py``: a ``SPECS`` dict from
Triton model name to a builder of its ``ExportSpec`` (an ONNX network) or ``PythonModelSpec`` (a
python-backend model, e.g. a decode loop over other models). Builders run lazily: a spec may
import torch models and read checkpoints. Nothing in export/ knows about individual models.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import pkgutil
from collections.abc import Callable
from functools import cache

import services
from export.spec import ExportSpec, PythonModelSpec

Builder = Callable[[], ExportSpec | PythonModelSpec]


@cache
def _builders() -> dict[str, Builder]:
    found: dict[str, Builder] = {}
    for family in pkgutil.iter_modules(services.__path__):
        module_name = f"services.{family.name}.export_specs"
        if not family.ispkg or importlib.util.find_spec(module_name) is None:
            continue
        for name, builder in importlib.import_module(module_name).SPECS.items():
            if name in found:
                raise ValueError(f"model {name!r} is registered by two families")
            found[name] = builder
    return found


def model_names() -> list[str]:
    """Names in export order: ONNX parts before the python models that call them (by name order
    within each kind is enough, since python models only reference, never build, their parts)."""
    return sorted(_builders())


def get_spec(name: str) -> ExportSpec | PythonModelSpec:
    builders = _builders()
    try:
        return builders[name]()
    except KeyError:
        close = difflib.get_close_matches(name, builders, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(model_names())}.{hint}") from None
