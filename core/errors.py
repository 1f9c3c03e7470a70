"""User-facing errors: one line naming the problem and the fix, exit code 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class GenzipError(Exception):
    """A problem with the user's input. The CLI prints ``str(err)`` and exits 2."""

    exit_code = 2

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem}; {fix}" if fix else problem)


def did_you_mean(word: str, choices: Iterable[str], n: int = 3) -> str:
    """Return ' (did you mean: a, b?)' or '' when nothing is close."""
    choices = list(choices)
    close = difflib.get_close_matches(word, choices, n=n, cutoff=0.5)
    if not close:
        return ""
    return " (did you mean: " + ", ".join(close) + "?)"
