"""The one exception tree of omni-batch; each error renders its own one-line user messages.

The CLI maps these to exit codes (``exit_code``) and prints ``lines()`` on stderr.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any


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
        return one_line(f"{self.where}:{field} {self.message}")


def one_line(text: str) -> str:
    """``text`` as one line: every character ``str.splitlines`` breaks on (newlines, and also
    \\x1c-\\x1e, \\x85, \\u2028...) shown escaped, as a value quoted from a file may hold them."""
    if len(text.splitlines()) <= 1 and not text.endswith(("\n", "\r")):
        return text
    return "".join(
        ch if len(("x" + ch + "x").splitlines()) == 1 else ascii(ch)[1:-1] for ch in text
    )


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


class StateError(OmniBatchError):
    """The output folder's journal cannot be used as asked (changed job, unreadable, locked)."""

    exit_code = 2


class JobTaken(StateError):
    """A shared journal's transition found its job no longer in the state this runner read:
    another runner moved it first (e.g. two runners marking one job `submitting`; only one
    wins, the other must leave the job alone). Single-machine journals never raise it."""


class OutputError(OmniBatchError):
    """The output folder or the video store cannot be written (permissions, full disk, a
    bucket that cannot be reached)."""

    exit_code = 2


class AlreadyStored(OutputError):
    """A create-only put found a video already under that name (another runner, or an earlier
    attempt, stored it first); what is there was left as it was."""

    def __init__(self, message: str, name: str):
        super().__init__(message)
        self.name = name


class ApiError(OmniBatchError):
    """The API answered with an error; carries what the report needs to say why.

    ``created_nothing`` says whether the answer proves that a submit created no task (and so
    cost nothing): only then may the same submit be sent again without a flag.
    """

    exit_code = 1
    created_nothing = False

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        error_type: str | None = None,
        request_id: str | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.status = status
        self.error_type = error_type
        self.request_id = request_id
        self.task_id: str | None = None  # a 409 "already used" may name the existing task

    def __str__(self) -> str:
        head = f"HTTP {self.status}" if self.status else "API error"
        kind = f" {self.error_type}" if self.error_type else ""
        rid = f" (request id {self.request_id})" if self.request_id else ""
        return f"{head}{kind}: {self.message}{rid}"


class AuthError(ApiError):
    """401: the key is missing or wrong; the whole run stops at once."""

    exit_code = 3
    created_nothing = True


class QuotaError(ApiError):
    """402: the balance is exhausted; submitting stops, in-flight tasks are still polled."""

    exit_code = 4
    created_nothing = True


class RateLimited(ApiError):
    """429: slow down; ``retry_after`` is the server's hint in seconds, if it gave one."""

    created_nothing = True

    def __init__(self, message: str, *, retry_after: float | None = None, **kw):
        super().__init__(message, **kw)
        self.retry_after = retry_after
        self.limits: Any = None  # budgets.RateHeaders: the answer's X-RateLimit-* headers
        self.category: str | None = None  # the budget it names (async_submit / async_query)


class ThrottledTooLong(OmniBatchError):
    """The API answered nothing but 429 for longer than ``Policy.max_throttled_s``: the run
    stops submitting and ends; every task already submitted stays in the journal."""

    exit_code = 5


class RequestRejected(ApiError):
    """400/403/404/422 and other 4xx: this request will never succeed as it is (and a submit
    refused this way created nothing)."""

    created_nothing = True


class ServerError(ApiError):
    """5xx: a transient upstream error. On a submit it proves nothing: the task may exist."""


class GatewayError(ServerError):
    """502/504 (and the 52x of CDNs): a proxy lost the upstream's answer."""


class NotAccepted(ServerError):
    """A 5xx whose error type says the request was refused before any work (e.g. 503
    ``rate_limit_unavailable``: the submit limiter is down): nothing was created."""

    created_nothing = True


class BadResponse(ApiError):
    """A 2xx whose body we cannot use (not JSON, missing fields, too large)."""


class UnrecognisedAnswer(BadResponse):
    """A 2xx to a submit without a task id we recognise: the task may exist and be billed.
    ``raw`` keeps the answer's text (bounded, key redacted) for the record."""

    def __init__(self, message: str, *, raw: str = "", **kw: Any):
        super().__init__(message, **kw)
        self.raw = raw


class ApiChanged(OmniBatchError):
    """Several submit answers in a row had no task id we recognise: the API's answers changed
    shape. Submitting stops; tasks in flight are finished."""

    exit_code = 1


class ApiUnreachable(OmniBatchError):
    """No connection to the API could be made (refused, DNS failure) after a few quick tries:
    the run stops; nothing was sent for the jobs still pending, so they stay pending."""

    exit_code = 6


class TransportError(OmniBatchError):
    """No HTTP answer arrived."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message
        self.status = None
        self.error_type = "transport"
        self.request_id = None

    created_nothing = False


class NotSent(TransportError):
    """The connection was never made (refused, DNS): the request provably did not arrive."""

    created_nothing = True


class Ambiguous(TransportError):
    """The request may have arrived (timeout, dropped connection, lost answer)."""


class InsufficientBalance(OmniBatchError):
    """Preflight (issue #15): the balance cannot pay for the jobs still to submit; nothing
    was submitted (``--allow-partial`` runs what it pays for)."""

    exit_code = 4


class BudgetReached(OmniBatchError):
    """Submitting stopped before ``budget.max_cost`` would be crossed; the rest stays
    pending, tasks in flight were finished."""

    exit_code = 4


class ModelNotAvailable(OmniBatchError):
    """Preflight (issue #15): the API's model list does not offer a model the manifest uses
    to this key; nothing was submitted."""

    exit_code = 2


class Interrupted(OmniBatchError):
    """The user stopped the run (Ctrl-C); the journal is consistent and the run resumable."""

    exit_code = 130
