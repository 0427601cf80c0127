"""The one exception tree of omni-batch; each error renders its own one-line user messages.

The CLI maps these to exit codes (``exit_code``) and prints ``lines()`` on stderr.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Where:
    """A place in a user's file: ``path:line``, ``path:row N`` or just ``path``."""

    path: str
    line: int | None = None
    row: int | None = None

    def __str__(self) -> str:
        if self.line is not None:
            return f"{self.path}:{self.line}"
        if self.row is not None:
            return f"{self.path}:row {self.row}"
        return self.path


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a user's input, rendered as ``where: field: message``."""

    where: Where
    field: str
    message: str

    def __str__(self) -> str:
        field = f" {self.field}:" if self.field else ""
        return f"{self.where}:{field} {self.message}"


class OmniBatchError(Exception):
    """Base of every error the library raises on purpose."""

    exit_code = 1

    def lines(self) -> list[str]:
        return [str(self)]


class InputError(OmniBatchError):
    """A user's file is wrong; carries every problem found, not just the first."""

    exit_code = 2

    def __init__(self, problems: Iterable[Problem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

    def lines(self) -> list[str]:
        return [str(p) for p in self.problems]

    def __iter__(self) -> Iterator[Problem]:
        return iter(self.problems)


class ManifestError(InputError):
    """The manifest (or its prompts file) cannot be expanded into jobs."""


class CatalogError(InputError):
    """A model catalog file is malformed."""


class UsageError(OmniBatchError):
    """The command was called in a way that cannot work (missing key, bad option mix)."""

    exit_code = 2
