"""Value checks shared by the frozen configs (one wording for one mistake)."""
from __future__ import annotations

from typing import Any


def positive_int(name: str, value: Any, error: type[Exception] = ValueError) -> int:
    """`value` if it is an int > 0 (a bool is not), else `error` naming `name` and the value."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise error(f"{name} must be a positive int, got {value!r}")
    return value
