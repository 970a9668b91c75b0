"""Value checks shared by the frozen configs (one wording for one mistake), and the prompt-length limit.

Imports nothing heavy: `rfrt serve` and the CLI use it before torch loads."""
from __future__ import annotations

from typing import Any

# The one prompt-length limit (the CLI, the generator's prompt cache and `rfrt serve` all apply it): a guard
# against pasting a file by mistake. The real bound is each encoder's token limit (umT5: 512 tokens, roughly
# 2000 characters of English), so nothing longer could reach the model anyway.
MAX_PROMPT_CHARS = 2000


def positive_int(name: str, value: Any, error: type[Exception] = ValueError) -> int:
    """`value` if it is an int > 0 (a bool is not), else `error` naming `name` and the value."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise error(f"{name} must be a positive int, got {value!r}")
    return value
