"""Several API accounts in one run (issue #14 item 8).

Keys come from ``TOAPIS_API_KEYS`` (comma-separated) or a keys file (one per line, ``#``
comments); ``ACCOUNT=KEY`` groups keys of one account (they share its budgets), a bare key is
an account of its own, named ``account-1``, ``account-2``... by its place among the bare keys.
The journal rows and the report hold an account's name, never a key. Since a name alone does
not say which key it stood for (bare keys are named by their place, an account may be renamed),
the journal's meta keeps, per account name, salted one-way fingerprints of its keys (a random
per-folder salt, ``blake2b``, 8 bytes): ``recognise`` maps the accounts a journal knows to the
accounts configured now by their keys, never by position.

``AccountRun`` is one account during a run: its budgets, one client per key (used in turn), its
in-flight cap, and whether it was retired (401: nothing more with it; 402: no more submits).
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import itertools
import json
import math
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from omni_batch.errors import InputError, Problem, Where

if TYPE_CHECKING:
    from omni_batch.journal import Journal
    from omni_batch.running.api import ToapisClient
    from omni_batch.running.budgets import Account

KEYS_ENV = "TOAPIS_API_KEYS"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
BARE = "account-{n}"
IDENTITY_META = "account_keys"  # journal meta: {"salt": hex, "accounts": {name: [fingerprint]}}


@dataclass(frozen=True, slots=True)
class AccountKeys:
    """One account as configured: its name and its keys, in the order given."""

    name: str
    keys: tuple[str, ...]


def _looks_like_key(text: str) -> bool:
    return bool(text) and not any(c.isspace() or ord(c) < 32 for c in text)


def parse_entries(entries: Iterable[tuple[Where, str]]) -> list[AccountKeys]:
    """``(where, text)`` entries, each ``KEY`` or ``ACCOUNT=KEY``, into accounts in the order
    they first appear. Every problem is reported (never quoting a key) in one InputError."""
    named: dict[str, list[str]] = {}
    order: list[str] = []
    seen: set[str] = set()
    problems: list[Problem] = []
    bare = 0
    for where, text in entries:
        account, sep, key = text.partition("=")
        account, key = account.strip(), key.strip()
        if not sep:
            account, key = "", text.strip()
        if sep and not account:
            problems.append(Problem(where, "keys", "an account name is missing before '='"))
            continue
        if sep and not NAME.match(account):
            problems.append(
                Problem(
                    where,
                    "keys",
                    "an account name is letters, digits, '_', '.' or '-' (up to 64), "
                    "starting with a letter or digit",
                )
            )
            continue
        if sep and re.fullmatch(r"account-\d+", account):
            problems.append(
                Problem(where, "keys", f"{account!r} is reserved for keys given without a name")
            )
            continue
        if not key:
            problems.append(Problem(where, "keys", "no key"))
            continue
        if not _looks_like_key(key):
            problems.append(Problem(where, "keys", "a key has no spaces or control characters"))
            continue
        if key in seen:
            problems.append(Problem(where, "keys", "this key was given before"))
            continue
        seen.add(key)
        if not sep:
            bare += 1
            account = BARE.format(n=bare)
        if account not in named:
            named[account] = []
            order.append(account)
        named[account].append(key)
    if problems:
        raise InputError(problems)
    return [AccountKeys(name, tuple(named[name])) for name in order]


def parse_keys_env(text: str, source: str = KEYS_ENV) -> list[AccountKeys]:
    """``TOAPIS_API_KEYS``: comma-separated ``KEY`` or ``ACCOUNT=KEY``; empty items skipped."""
    entries = [
        (Where(f"{source} item {n}"), part)
        for n, part in enumerate(text.split(","), 1)
        if part.strip()
    ]
    if not entries:
        raise InputError([Problem(Where(source), "keys", "no key in it")])
    return parse_entries(entries)


def parse_keys_file(path: str | Path) -> list[AccountKeys]:
    """A keys file: one ``KEY`` or ``ACCOUNT=KEY`` a line; ``#`` starts a comment (a whole
    line, or after a space); blank lines are skipped. Errors name ``path:line``."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError([Problem(Where(str(path)), "keys", exc.strerror or str(exc))]) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError([Problem(Where(str(path)), "keys", "not UTF-8 text")]) from None
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        content = line.strip()
        if content.startswith("#"):
            continue
        content = re.split(r"\s#", content, maxsplit=1)[0].strip()
        if content:
            entries.append((Where(str(path), line=number), content))
    if not entries:
        raise InputError([Problem(Where(str(path)), "keys", "no key in it")])
    return parse_entries(entries)


def fingerprint(key: str, salt: bytes) -> str:
    """A salted one-way fingerprint of a key (16 hex digits): tells keys apart, gives no key
    back, and (salted per folder) matches nothing outside its folder."""
    return hashlib.blake2b(key.encode(), key=salt, digest_size=8).hexdigest()


@dataclass(frozen=True, slots=True)
class Identity:
    """How one configured account is known in a journal: ``recorded``, the name its jobs are
    journaled (and reported) under; ``aliases``, every journaled name whose jobs are its own
    (``recorded`` first)."""

    recorded: str
    aliases: tuple[str, ...]


def match(
    stored: dict[str, list[str]], configured: list[tuple[str, set[str]]]
) -> tuple[list[Identity], dict[str, list[str]], list[str]]:
    """Pure logic of ``recognise``. ``stored``: journaled name -> fingerprints; ``configured``:
    (name, fingerprints) in order. A journaled account is the first configured one that shares
    a fingerprint with it (a key in common: the same account, whatever its name or place now).
    A configured account with none is recorded under its own name, unless the journal already
    knows that name for other keys: then under a free one (``account-N`` for a bare key,
    ``NAME-N`` else). Returns (an Identity per configured account, the fingerprints to store,
    notes for the log)."""
    aliases: list[list[str]] = [[] for _ in configured]
    for name, prints in stored.items():
        for n, (_, mine) in enumerate(configured):
            if mine & set(prints):
                aliases[n].append(name)
                break
    taken = set(stored) | {a for names in aliases for a in names}
    out: list[Identity] = []
    notes: list[str] = []
    updated = {name: list(prints) for name, prints in stored.items()}
    for (name, mine), names in zip(configured, aliases, strict=True):
        if names:
            recorded = names[0]
            if recorded != name:
                notes.append(
                    f"account {name}: its key is account {recorded}'s in this folder's journal; "
                    f"its jobs are recorded and reported as {recorded}"
                )
        else:
            recorded = name
            if recorded in taken:
                bare = re.fullmatch(r"account-\d+", name)
                n = 1
                while recorded in taken:
                    n += 1
                    recorded = BARE.format(n=n) if bare else f"{name[:60]}-{n}"
                notes.append(
                    f"account {name}: this folder's journal knows that name for other keys; "
                    f"its jobs are recorded as {recorded}"
                )
            taken.add(recorded)
            names = [recorded]
        updated[recorded] = sorted(set(updated.get(recorded, [])) | mine)
        out.append(Identity(recorded, tuple(names)))
    return out, updated, notes


def recognise(journal: Journal, accounts: list[AccountKeys]) -> tuple[list[Identity], list[str]]:
    """The journal's accounts recognised among ``accounts`` by their keys' fingerprints (see
    ``match``), and the fingerprints of this run's keys added to the journal's meta. A journal
    without fingerprints (a new folder, or one of an older version) trusts names, as before.
    Returns (an Identity per account, in order; notes for the log)."""
    raw = journal.meta(IDENTITY_META)
    stored: dict[str, list[str]] = {}
    salt = b""
    if raw:
        try:
            data = json.loads(raw)
            salt = bytes.fromhex(data["salt"])
            stored = {str(k): [str(p) for p in v] for k, v in data["accounts"].items()}
        except (ValueError, KeyError, TypeError, AttributeError):
            salt, stored = b"", {}  # unreadable: trusted by name, like an older journal
    if not salt:
        salt = secrets.token_bytes(16)
    configured = [(a.name, {fingerprint(k, salt) for k in a.keys}) for a in accounts]
    if stored:
        identities, updated, notes = match(stored, configured)
    else:  # new folder or older journal: names are trusted
        identities = [Identity(a.name, (a.name,)) for a in accounts]
        updated, notes = {name: sorted(prints) for name, prints in configured}, []
    journal.set_meta(IDENTITY_META, json.dumps({"salt": salt.hex(), "accounts": updated}))
    return identities, notes


class AccountRun:
    """One account during a run: budgets, clients (one per key, used in turn), in-flight
    cap (per account: the API's concurrency limit is per account) and standing."""

    def __init__(
        self,
        name: str,
        budgets: Account,
        clients: list[ToapisClient],
        ceiling: int,
        identity: Identity | None = None,
    ):
        self.name = name
        # the name its jobs are journaled under, and every journaled name whose jobs are its
        # own (recognised by their keys: accounts.recognise)
        self.identity = identity or Identity(name, (name,))
        self.budgets = budgets
        self.clients = clients
        # keys used in turn, submits and queries each on their own turn (so both spread)
        self._turns = {True: itertools.cycle(clients), False: itertools.cycle(clients)}
        # the in-flight cap: lowered to what is running when the API says the account may run
        # no more tasks at once (a concurrency 429), raised back as tasks finish
        self.cap = self.cap_ceiling = max(1, ceiling)
        self.cap_cut_at = -math.inf  # when a concurrency 429 last lowered it
        self.active = 0  # this account's jobs between claim and terminal state
        self.running = 0  # of them, those with a task (a task id): what its concurrency counts
        self.finished = 0  # its tasks finished this run (a concurrency wait waits for one)
        self.concurrency_429s = 0  # concurrency 429s in a row (its back-off grows with them)
        self.waiting = 0  # submits that chose it and wait for its submit budget
        # accepted submits of the last few seconds (engine.CONCURRENCY_WINDOW; the oldest
        # drop off), to tell a concurrency 429 from a rate 429
        self.accepted: collections.deque[float] = collections.deque()
        self.first_submit_at: float | None = None
        self.last_query_ok = -math.inf
        self.retired = False  # 401: nothing more is sent with it this run
        self.no_submits = False  # 402 (or retired): no new submits with it this run
        self.submitted = 0  # tasks created with it this run
        # until one call proves the account's key, its submits go one at a time, so a wrong
        # key costs one 401, not one per worker
        self.key_proven = asyncio.Event()
        self.probe = asyncio.Lock()

    def client(self, submit: bool = False) -> ToapisClient:
        return next(self._turns[submit])

    @property
    def can_submit(self) -> bool:
        return not (self.retired or self.no_submits)

    def has_room(self) -> bool:
        return self.can_submit and self.active < self.cap

    def submit_eta(self) -> float:
        """Seconds until a submit sent through this account would pass its budgets, counting
        the submits that already chose it and are waiting."""
        eta = 0.0
        for budget in self.budgets.budgets("async_submit"):
            pacer = budget.pacer
            if pacer is None:
                continue
            ahead = self.waiting + 1
            eta = max(eta, pacer.backlog_in(ahead))
        return eta

    def __repr__(self) -> str:  # never a key
        return f"AccountRun({self.name!r})"


def choose(accounts: list[AccountRun]) -> AccountRun | None:
    """The account a new submit goes to: among those that may submit and have room in their
    in-flight cap, the one whose submit budget frees soonest; then the one with the fewest
    tasks in flight; then the first configured."""
    best: tuple[float, int, int] | None = None
    chosen = None
    for n, account in enumerate(accounts):
        if not account.has_room():
            continue
        score = (account.submit_eta(), account.active + account.waiting, n)
        if best is None or score < best:
            best, chosen = score, account
    return chosen


__all__ = [
    "KEYS_ENV",
    "AccountKeys",
    "AccountRun",
    "Identity",
    "choose",
    "fingerprint",
    "match",
    "parse_entries",
    "parse_keys_env",
    "parse_keys_file",
    "recognise",
]
