"""Problems in users' input: where each was written, the collector, and "did you mean" (one copy).

``Where`` and ``Problem`` live in ``omni_batch.errors`` beside the exception tree that carries them;
this module owns collecting them and suggesting the closest valid choice.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from omni_batch.errors import Problem, Where
from omni_batch.planning._yaml import LList

__all__ = ["Field", "Problem", "Problems", "Where", "suggest"]


def suggest(word: str, choices: Iterable[str], *, fold_case: bool = False) -> str:
    """``'; did you mean X?'`` for the closest of ``choices``, or ``''``.

    ``fold_case``: a choice equal to ``word`` but for case is the answer before any other.
    """
    choices = list(choices)
    if fold_case:
        folded = {c.casefold(): c for c in choices}
        if word.casefold() in folded:
            return f"; did you mean {folded[word.casefold()]}?"
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


@dataclass
class Problems:
    """Every problem found so far, each once; ``raised`` also counts repeats.

    ``notes`` are not problems: guesses made on the user's behalf (a CSV delimiter), shown
    beside the plan, and beside the problems when there are some (they may explain them).
    """

    items: list[Problem] = field(default_factory=list)
    raised: int = 0
    notes: list[Problem] = field(default_factory=list)
    _seen: set[tuple[str, str, str]] = field(default_factory=set)

    def note(self, where: Where, message: str) -> None:
        self.notes.append(Problem(where, "note", message))

    def add(self, where: Where, name: str, message: str) -> None:
        self.raised += 1
        key = (str(where), name, message)
        if key not in self._seen:
            self._seen.add(key)
            self.items.append(Problem(where, name, message))

    def __bool__(self) -> bool:
        return bool(self.items)


@dataclass
class Field:
    """A raw manifest value with where it was written."""

    value: Any
    where: Where
    name: str
    split: bool = False  # CSV cells hold several values separated by |

    def items(self) -> list[tuple[Any, Where]]:
        if isinstance(self.value, LList):
            lines = self.value.lines
            return [(v, Where(self.where.path, lines[i])) for i, v in enumerate(self.value)]
        if isinstance(self.value, list):
            return [(v, self.where) for v in self.value]
        if self.split and isinstance(self.value, str):
            return [(part.strip(), self.where) for part in self.value.split("|")]
        return [(self.value, self.where)]
