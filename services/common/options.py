"""String options as Enums, resolved with a suggestion of the closest valid value."""

from __future__ import annotations

import difflib
from enum import StrEnum
from typing import TypeVar

E = TypeVar("E", bound=StrEnum)


def look_up(options: type[E], value: str | E, what: str) -> E:
    """``options(value)``, or a ValueError naming the valid values and the closest one."""
    try:
        return options(value)
    except ValueError:
        names = [m.value for m in options]
        close = difflib.get_close_matches(str(value), names, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"{what} {value!r} is not one of {names}.{hint}") from None
