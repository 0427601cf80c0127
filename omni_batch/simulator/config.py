"""The simulator's knobs: ``SimConfig`` (a frozen dataclass), the named ``PROFILES``, and
``parse_settings`` for ``--set KNOB=VALUE`` text. Every fault and timing lives here as data.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Literal, Union, get_args, get_origin, get_type_hints

from omni_batch.errors import UsageError
from omni_batch.planning.problems import suggest

if TYPE_CHECKING:
    from omni_batch.running.options import Policy

DEFAULT_KEY = "sk-sim-local"

SubmitShape = Literal["object", "legacy", "mixed"]
ResultShape = Literal["result", "url", "video_url", "mixed"]
QueuedWord = Literal["queued", "submitted", "mixed"]
ErrorCode = Literal["int", "string", "mixed"]
DuplicateCbid = Literal["conflict", "existing", "conflict_bare", "conflict_bogus"]
CbidSupport = Literal["on", "lookup_only", "no_lookup", "ignored", "wrong_task"]
EchoJson = Literal["ascii", "utf8", "unicode"]
VideoEncoding = Literal["identity", "gzip", "deflate"]
RetryAfterForm = Literal["seconds", "http-date"]
LimitOnly = Literal["all", "submits", "polls"]
RateHeaders = Literal["none", "limited", "all"]
GenSpread = Literal["uniform", "lognormal"]
ECHO_PLACES = ("error", "header", "text", "url")


@dataclass(frozen=True, slots=True, kw_only=True)
class SimConfig:
    """Everything the simulator can be told. Probabilities are 0..1, times are seconds.

    Per-task outcomes (timings, failure, shapes) derive from ``(seed, task number)``;
    per-request faults come from one RNG seeded with ``seed``, drawn in arrival order.
    """

    seed: int = 0
    keys: tuple[str, ...] = (DEFAULT_KEY,)

    # Limits per account (see `accounts`; by default each key is its own account).
    # rate=None means no request-rate limit; max_active=None no cap.
    rate: float | None = None
    burst: int = 20
    max_active: int | None = None
    quota_after: int | None = None  # tasks a key may create before submits answer 402

    # Task timing: queued for U(queue_min, queue_max), then in progress for U(gen_min, gen_max).
    queue_min: float = 0.1
    queue_max: float = 0.3
    gen_min: float = 0.5
    gen_max: float = 2.0
    p_fail: float = 0.0  # a generation ends "failed" with a content-policy message
    p_reject: float = 0.0  # a submit is refused at once: 422 content policy violation
    blocked_models: tuple[str, ...] = ()  # models this key may not use: 403
    link_ttl: float = 86_400.0
    refresh_links: bool = True  # a poll after expiry hands out a fresh link (else the dead one)

    # Per-request faults on API calls (submits and polls).
    latency: float = 0.0  # added to every API response
    p_slow: float = 0.0
    slow_delay: float = 2.0
    p_5xx: float = 0.0
    p_429: float = 0.0
    storm_s: float = 0.0  # each injected 429 makes the key's next storm_s seconds all 429
    retry_after: int = 1  # Retry-After for injected 429s and storms without a known end
    p_drop: float = 0.0  # close the connection without an answer
    p_ambiguous: float = 0.0  # submit: create the task, then drop the connection

    # Downloads from the CDN listener.
    download_rate: float | None = None  # bytes/s; None sends at once
    p_truncate: float = 0.0  # promise the full length, send half, close

    # Response shapes the contract leaves open ([varies]).
    submit_shape: SubmitShape = "object"
    result_shape: ResultShape = "result"
    queued_word: QueuedWord = "queued"
    error_code: ErrorCode = "int"
    duplicate_cbid: DuplicateCbid = "conflict"  # reused client_business_id: 409, or the old task

    clip_fps: int = 6

    # Money-safety faults (issue #13, submit path). Each draws from its own seeded stream.
    p_5xx_after_create: float = 0.0  # submit: create the task, then answer a 5xx anyway
    after_create_status: int = 0  # that 5xx; 0 cycles 500 502 503 504 520 522 524
    p_unrecognised: float = 0.0  # submit: create the task, answer 200 without a known task id
    p_limiter_down: float = 0.0  # submit: 503 rate_limit_unavailable, nothing created
    # client_business_id: "on" (409 on reuse, status by it), "lookup_only" (status by it, a
    # reuse creates another task: the contract's "a lookup, not an idempotency key"),
    # "no_lookup" (409 on reuse only), "ignored" (the field is dropped), "wrong_task" (a
    # lookup by it answers the key's first task instead, echoing that task's own id)
    cbid: CbidSupport = "on"
    cbid_lag: float = 0.0  # the status lookup by it finds a task only this long after create

    # A hostile server (issue #13 items 7-10, h-http); every knob off by default.
    # Echo the caller's key back: in error messages and failed tasks' messages ("error": plain,
    # base64 and URL-encoded), in X-Request-Id ("header"), in text/plain error bodies ("text"),
    # in video links' query ("url"); JSON answers then encode it as echo_json says: ascii
    # (json's default: \" \\ \u00e9), utf8 (raw) or unicode (every character \uXXXX).
    echo_key: tuple[str, ...] = ()
    echo_json: EchoJson = "ascii"
    video_host: str | None = None  # video links name this host (127.0.0.2, localhost, ...)
    cdn_redirect: str | None = None  # the CDN answers each download with a 302 to this host
    status_redirect: bool = False  # status calls answer 307 to the video link
    status_bomb_mb: int = 0  # status answers: gzip inflating to this many MiB of whitespace
    video_encoding: VideoEncoding = "identity"  # the CDN sends videos gzip- or deflate-encoded
    video_bomb_mb: int = 0  # the CDN sends, as the video, gzip inflating to this many MiB
    retry_after_form: RetryAfterForm = "seconds"  # the form of every Retry-After
    retry_after_value: int | None = None  # every 429's Retry-After, in seconds (e.g. 999999)
    limit_first: int = 0  # the first N API requests answer 429
    limit_after: int | None = None  # every API request after the first N answers 429, forever
    limit_only: LimitOnly = "all"  # limit_first/limit_after count and refuse only these

    # Issue #13 item 5 (a paid video is never abandoned): answers that keep a task's video from
    # the client for a while. Each is counted per task, so a later run gets the video.
    unknown_polls: int = 0  # a task's first N status calls (lookups too) answer 404
    no_url_answers: int = 0  # a completed task's first N answers carry no video URL
    stale_link_answers: int = 0  # ... and its next N hand out a link that already expired

    # Issue #13 item 6 (shutdown never hangs): a submit creates its task at once, then its
    # answer is held back this long (a slow upstream; a client stopping meanwhile never sees it).
    submit_answer_delay: float = 0.0

    # issue #14 rate budgets (h-sim). Limits are counted per ACCOUNT: `accounts` groups keys
    # ("ACCOUNT=KEY"; a key not listed is an account of its own), and rate/burst, max_active
    # and the two category buckets below are each one budget per account. A 429 takes no
    # token; any other answer after the limits (a 400, 402, 422, a 5xx fault) does.
    accounts: tuple[str, ...] = ()
    submit_rate: float | None = None  # async_submit (POST generations), requests/s
    submit_burst: int = 1
    query_rate: float | None = None  # async_query (status calls, lookups), requests/s
    query_burst: int = 1
    rate_headers: RateHeaders = "none"  # X-RateLimit-* on every answer, only on 429s, or none
    concurrency_says: bool = True  # the max_active 429 names concurrent tasks (else: a rate 429)
    gen_spread: GenSpread = "uniform"
    progress_noise: float = 0.0  # status progress = true fraction +- this (0..1), monotone
    # issue #15 spend: billing. A task costs the catalog's usd_per_second x credits_per_usd
    # credits per second of video (a model without a price costs nothing here), taken when it
    # is created and given back when its generation fails; a submit the balance cannot pay
    # answers 402 insufficient_quota. None: an unlimited balance.
    balance_credits: float | None = None
    credits_per_usd: float = 200.0
    balance_endpoint: bool = True  # GET /v1/balance and /v1/user/balance (off: 404)
    models_endpoint: bool = True  # GET /v1/models (off: 404)

    # issue #14 item 8, several accounts (h-acct): "KEY=N" entries; the key answers 401 to
    # every request after its first N (a key revoked mid-run). Deterministic: no randomness.
    revoke_after: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        problem = _problem(self)
        if problem:
            raise UsageError(f"simulator: {problem}")

    @classmethod
    def from_profile(cls, name: str = "default", **overrides: Any) -> SimConfig:
        """The named profile with ``overrides`` (knob=value) laid over it."""
        if name not in PROFILES:
            raise UsageError(
                f"unknown simulator profile {name!r} (known: {', '.join(PROFILES)})"
                + suggest(name, PROFILES)
            )
        for knob in overrides:
            _check_knob(knob)
        if "keys" in overrides and isinstance(overrides["keys"], str):
            overrides["keys"] = (overrides["keys"],)
        if "revoke_after" in overrides and isinstance(overrides["revoke_after"], str):
            overrides["revoke_after"] = (overrides["revoke_after"],)
        if "accounts" in overrides and isinstance(overrides["accounts"], str):
            overrides["accounts"] = tuple(
                part.strip() for part in overrides["accounts"].split(",") if part.strip()
            )
        return dataclasses.replace(PROFILES[name], **overrides)

    def accepted_keys(self) -> tuple[str, ...]:
        """Every key the simulator accepts: ``keys``, then the keys ``accounts`` lists."""
        listed = (entry.partition("=")[2].strip() for entry in self.accounts)
        return tuple(dict.fromkeys((*self.keys, *listed)))

    def account_of(self) -> dict[str, str]:
        """Key → the account whose budgets it spends: the name ``accounts`` gives it, else
        ``key1``, ``key2``... by its place among the accepted keys (never the key itself)."""
        named = {}
        for entry in self.accounts:
            account, _, key = entry.partition("=")
            named[key.strip()] = account.strip()
        return {key: named.get(key, f"key{n}") for n, key in enumerate(self.accepted_keys(), 1)}

    def revoked_after(self) -> dict[str, int]:
        """Key → requests it is answered before every later one gets 401 (revoke_after)."""
        out = {}
        for entry in self.revoke_after:
            key, _, count = entry.rpartition("=")
            out[key.strip()] = int(count)
        return out

    def knobs(self) -> dict[str, Any]:
        """Knob name → value, in declaration order (for printing and stats)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


KNOBS: tuple[str, ...] = tuple(f.name for f in fields(SimConfig))


def _problem(c: SimConfig) -> str | None:
    for name in KNOBS:
        value = getattr(c, name)
        if name.startswith("p_") and not 0.0 <= value <= 1.0:
            return f"{name} must be between 0 and 1, not {value}"
    hints = get_type_hints(SimConfig)
    literals = ("submit_shape", "result_shape", "queued_word", "error_code", "duplicate_cbid")
    for name in (
        *literals,
        "cbid",
        "echo_json",
        "video_encoding",
        "retry_after_form",
        "limit_only",
        "rate_headers",
        "gen_spread",
    ):
        allowed = get_args(hints[name])
        if getattr(c, name) not in allowed:
            return f"{name} must be one of {', '.join(allowed)}, not {getattr(c, name)!r}"
    if not c.keys or not all(isinstance(k, str) and k.strip() for k in c.keys):
        return "keys must be one or more non-empty strings"
    if not 0 <= c.queue_min <= c.queue_max or not 0 <= c.gen_min <= c.gen_max:
        return "need 0 <= queue_min <= queue_max and 0 <= gen_min <= gen_max"
    for name in ("rate", "download_rate"):
        value = getattr(c, name)
        if value is not None and value <= 0:
            return f"{name} must be positive or none"
    for name in ("max_active", "quota_after"):
        value = getattr(c, name)
        if value is not None and value < 0:
            return f"{name} must be 0 or more, or none"
    if c.after_create_status and not 500 <= c.after_create_status <= 599:
        return f"after_create_status must be a 5xx status or 0, not {c.after_create_status}"
    for name in ("unknown_polls", "no_url_answers", "stale_link_answers"):
        if getattr(c, name) < 0:
            return f"{name} must be 0 or more"
    nonneg = ("latency", "slow_delay", "storm_s", "link_ttl", "cbid_lag", "submit_answer_delay")
    if c.burst < 1 or c.retry_after < 1 or c.clip_fps < 1 or any(getattr(c, n) < 0 for n in nonneg):
        return "burst, retry_after and clip_fps must be >= 1; times must be >= 0"
    if c.balance_credits is not None and not c.balance_credits >= 0:
        return "balance_credits must be 0 or more, or none"
    if not c.credits_per_usd > 0:
        return "credits_per_usd must be more than 0"
    return _hostile_problem(c) or _rate_problem(c)


def _rate_problem(c: SimConfig) -> str | None:
    """The issue #14 rate-budget knobs (h-sim)."""
    seen: dict[str, str] = {}
    for entry in c.accounts:
        account, sep, key = (part.strip() for part in str(entry).partition("="))
        if not sep or not account or not key:
            return f"accounts: each entry is ACCOUNT=KEY, not {entry!r}"
        if seen.setdefault(key, account) != account:
            return f"accounts: a key belongs to one account, not {seen[key]!r} and {account!r}"
    for name in ("submit_rate", "query_rate"):
        value = getattr(c, name)
        if value is not None and value <= 0:
            return f"{name} must be positive or none"
    for name in ("submit_burst", "query_burst"):
        if getattr(c, name) < 1:
            return f"{name} must be >= 1"
    if c.gen_spread == "lognormal" and c.gen_min <= 0:
        return "gen_spread lognormal needs gen_min > 0 (its median is sqrt(gen_min * gen_max))"
    if not 0.0 <= c.progress_noise <= 1.0:
        return f"progress_noise must be between 0 and 1, not {c.progress_noise}"
    for entry in c.revoke_after:
        key, sep, count = (part.strip() for part in str(entry).rpartition("="))
        if not sep or not key or not count.isdigit():
            return "revoke_after: each entry is KEY=N (N requests answered before 401s)"
    return None


def _hostile_problem(c: SimConfig) -> str | None:
    if unknown := [p for p in c.echo_key if p not in ECHO_PLACES]:
        return f"echo_key: unknown place {unknown[0]!r} (known: {', '.join(ECHO_PLACES)})"
    for name in ("video_host", "cdn_redirect"):
        host = getattr(c, name)
        if host is not None and (not host or any(ch in host for ch in "/?#@ \t")):
            return f"{name} must be a bare host name or address, not {host!r}"
    counts = ("status_bomb_mb", "video_bomb_mb", "limit_first", "retry_after_value", "limit_after")
    for name in counts:
        value = getattr(c, name)
        if value is not None and value < 0:
            return f"{name} must be 0 or more"
    return None


def _check_knob(name: str) -> None:
    if name not in KNOBS:
        raise UsageError(f"unknown simulator knob {name!r}{suggest(name, KNOBS)}")


def _convert(name: str, text: str) -> Any:
    """Text from the command line → the knob's Python type (``none`` for optional knobs);
    text that is not of that type is a UsageError saying what the knob wants."""
    hint = get_type_hints(SimConfig)[name]
    args = get_args(hint)
    optional = get_origin(hint) in (Union, types.UnionType) and type(None) in args
    if optional:
        if text.strip().lower() in ("none", "null", ""):
            return None
        hint = next(a for a in args if a is not type(None))
    or_none = " or none" if optional else ""

    def wrong(wants: str) -> UsageError:
        return UsageError(f"simulator knob {name}: {text!r} is not {wants}{or_none}")

    if get_origin(hint) is Literal:
        allowed = get_args(hint)
        if text not in allowed:
            raise UsageError(
                f"simulator knob {name}: {text!r} is not one of {', '.join(allowed)}"
                + suggest(text, allowed)
            )
        return text
    if get_origin(hint) is tuple:
        return tuple(part.strip() for part in text.split(",") if part.strip())
    if hint is bool:
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise wrong("true or false (or yes/no, on/off, 1/0)")
    try:
        return hint(text)
    except ValueError:
        raise wrong("a whole number" if hint is int else "a number") from None


def parse_settings(pairs: Iterable[str]) -> dict[str, Any]:
    """``["p_5xx=0.1", "rate=none"]`` → typed overrides; a bad pair raises UsageError."""
    out: dict[str, Any] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        name = name.strip()
        if not sep or not name:
            raise UsageError(f"a simulator setting is KNOB=VALUE, not {pair!r}")
        _check_knob(name)
        out[name] = _convert(name, text.strip())
    return out


# What each knob does, one line each, for `simulate --show`. Every knob needs one (a test
# checks): when you add a knob to SimConfig, add its line here.
KNOB_HELP: Mapping[str, str] = {
    "seed": "seed of every random choice: task timings, failures, faults",
    "keys": "API keys the simulator accepts (comma-separated)",
    "rate": "requests/s an account may make, all calls in one budget, before calls answer 429 "
    "(none: no limit)",
    "burst": "requests an account may make at once before `rate` applies",
    "max_active": "unfinished tasks an account may have before submits answer 429 (none: no cap)",
    "quota_after": "tasks a key may create before submits answer 402 (none: no limit)",
    "queue_min": "shortest time a task stays queued, in seconds",
    "queue_max": "longest time a task stays queued, in seconds",
    "gen_min": "shortest generation time after the queue, in seconds",
    "gen_max": "longest generation time after the queue, in seconds",
    "p_fail": "chance a generation ends failed with a content-policy message",
    "p_reject": "chance a submit is refused at once: 422 content policy violation",
    "blocked_models": "models the keys may not use: submits answer 403 (comma-separated)",
    "link_ttl": "seconds a video link works after its task completed",
    "refresh_links": "a poll after a link expired hands out a fresh one (false: the dead one)",
    "latency": "seconds added to every API answer",
    "p_slow": "chance an API call is held back by slow_delay",
    "slow_delay": "seconds a slow API call is held back",
    "p_5xx": "chance an API call answers 500, 502 or 503 before doing anything",
    "p_429": "chance an API call answers 429 (and starts a storm of storm_s)",
    "storm_s": "after an injected 429, seconds during which every call of the key gets 429",
    "retry_after": "Retry-After seconds on injected 429s",
    "p_drop": "chance an API call's connection is closed without an answer",
    "p_ambiguous": "chance a submit creates its task, then drops the connection",
    "download_rate": "video download speed in bytes/s (none: all at once)",
    "p_truncate": "chance a download promises the whole video, sends half and closes",
    "submit_shape": "submit answer: object, legacy ({code, data: [...]}) or mixed",
    "result_shape": "where a completed task's link is: result.data[0].url, url, video_url, mixed",
    "queued_word": "status of a queued task: queued, submitted or mixed",
    "error_code": "error.code of error answers: int (the status), string or mixed",
    "duplicate_cbid": "a reused client_business_id: conflict (409 naming the task), existing "
    "(the old task), conflict_bare (409 naming none), conflict_bogus (409 naming a bogus id)",
    "clip_fps": "frames per second of the rendered test videos",
    "p_5xx_after_create": "chance a submit creates its task, then answers a 5xx anyway",
    "after_create_status": "that 5xx; 0 cycles 500 502 503 504 520 522 524",
    "p_unrecognised": "chance a submit creates its task and answers 200 without a known task id",
    "p_limiter_down": "chance a submit answers 503 rate_limit_unavailable, creating nothing",
    "cbid": "client_business_id: on (409 on reuse, status by it), lookup_only (status by it; "
    "a reuse makes another task), no_lookup (409 on reuse only), ignored, wrong_task (a lookup "
    "answers another task)",
    "cbid_lag": "seconds after a create before the status lookup by client_business_id finds it",
    "echo_key": "echo the caller's key back in: error, header, text, url (comma-separated)",
    "echo_json": "how JSON answers encode an echoed key: ascii, utf8 or unicode (all \\uXXXX)",
    "video_host": "video links name this host (e.g. 127.0.0.2, localhost, 169.254.169.254)",
    "cdn_redirect": "the CDN answers each download with a 302 to this host",
    "status_redirect": "status calls answer 307 to the video link",
    "status_bomb_mb": "status answers are gzip that inflates to this many MiB (0: off)",
    "video_encoding": "the CDN sends videos gzip- or deflate-encoded (identity: as they are)",
    "video_bomb_mb": "the CDN sends, as the video, gzip inflating to this many MiB (0: off)",
    "retry_after_form": "the form of every Retry-After: seconds or http-date",
    "retry_after_value": "every 429's Retry-After in seconds (none: the simulator's own)",
    "limit_first": "the first N API requests answer 429",
    "limit_after": "every API request after the first N answers 429, forever (none: off)",
    "limit_only": "which calls limit_first / limit_after count and refuse: all, submits or polls",
    "unknown_polls": "a task's first N status calls (lookups too) answer 404",
    "no_url_answers": "a completed task's first N answers carry no video URL",
    "stale_link_answers": "... and its next N hand out a link that already expired",
    "submit_answer_delay": "seconds a submit's answer is held back after its task is created",
    "accounts": "ACCOUNT=KEY pairs (comma-separated): keys of one account share its limits; "
    "listed keys are accepted, a key not listed is an account of its own",
    "submit_rate": "async_submit budget per account (POST generations), requests/s (none: no "
    "limit); a call must also pass rate/burst when that is set",
    "submit_burst": "async_submit tokens an idle account has saved up (>= 1)",
    "query_rate": "async_query budget per account (status calls, lookups), requests/s (none: "
    "no limit)",
    "query_burst": "async_query tokens an idle account has saved up (>= 1)",
    "rate_headers": "X-RateLimit-Limit/-Remaining/-Reset/-Category on every API answer (all), "
    "only on 429s (limited), or none",
    "concurrency_says": "the max_active 429 speaks of concurrent tasks (false: it reads like a "
    "submit-rate 429)",
    "gen_spread": "generation time: uniform in gen_min..gen_max, or lognormal (sigma 0.35) "
    "around their geometric mean x duration/6 s, clipped to gen_min..gen_max",
    "progress_noise": "status progress = true fraction +- this (0..1); never decreases, never "
    "100 before done",
    "balance_credits": "the account's balance in credits; a submit it cannot pay answers 402, "
    "a failed generation is refunded (none: unlimited)",
    "credits_per_usd": "credits per US dollar: a task costs the catalog's usd_per_second x this "
    "per second of video",
    "balance_endpoint": "GET /v1/balance and /v1/user/balance answer (false: 404, as an API "
    "without them)",
    "models_endpoint": "GET /v1/models answers (false: 404, as an API without it)",
    "revoke_after": "KEY=N pairs (comma-separated): the key answers 401 to every request after "
    "its first N (a key revoked mid-run)",
}


def knob_help(name: str) -> str:
    """The knob's line of help (its allowed values appended for a choice)."""
    _check_knob(name)
    text = KNOB_HELP.get(name, "")
    hint = get_type_hints(SimConfig)[name]
    if get_origin(hint) is Literal and not all(v in text for v in get_args(hint)):
        text += f" (one of: {', '.join(get_args(hint))})"
    return text


_BASE = SimConfig()

PROFILES: dict[str, SimConfig] = {
    # Quick start: every task completes in about a second or two, no faults.
    "default": _BASE,
    # For tests: tasks finish within ~0.25 s.
    "fast": dataclasses.replace(
        _BASE, queue_min=0.02, queue_max=0.05, gen_min=0.05, gen_max=0.2, clip_fps=4
    ),
    # Everything that can go wrong, often enough to be seen in a batch of a few dozen.
    "chaos": dataclasses.replace(
        _BASE,
        rate=40.0,
        burst=20,
        max_active=30,
        queue_min=0.05,
        queue_max=0.3,
        gen_min=0.2,
        gen_max=1.5,
        p_fail=0.1,
        link_ttl=5.0,
        p_slow=0.05,
        slow_delay=1.0,
        p_5xx=0.05,
        p_429=0.02,
        storm_s=1.0,
        p_drop=0.02,
        p_ambiguous=0.03,
        download_rate=150_000.0,
        p_truncate=0.02,
        submit_shape="mixed",
        result_shape="mixed",
        queued_word="mixed",
        error_code="mixed",
    ),
    # Documented upstream timings (queued 5-10 s, generation 1-5 min); the limits are guesses,
    # since no numeric rate or concurrency limits are published.
    "realistic": dataclasses.replace(
        _BASE,
        rate=10.0,
        burst=20,
        max_active=50,
        queue_min=5.0,
        queue_max=10.0,
        gen_min=60.0,
        gen_max=300.0,
        p_fail=0.03,
        latency=0.15,
        p_5xx=0.002,
        download_rate=5_000_000.0,
    ),
    # The default tier's published limits (contract, "Rate limits"), per account: async_submit
    # 5/s with a burst of 50, async_query 50/s (no burst is published: 50, one second's worth),
    # every answer carrying X-RateLimit-*; documented timings with a lognormal spread.
    "published": dataclasses.replace(
        _BASE,
        submit_rate=5.0,
        submit_burst=50,
        query_rate=50.0,
        query_burst=50,
        rate_headers="all",
        queue_min=5.0,
        queue_max=10.0,
        gen_min=60.0,
        gen_max=300.0,
        gen_spread="lognormal",
        latency=0.15,
    ),
}
# The same limits with the 20-40 s generations issue #14 measured with (for benches).
PROFILES["published-fast"] = dataclasses.replace(
    PROFILES["published"],
    queue_min=1.0,
    queue_max=3.0,
    gen_min=20.0,
    gen_max=40.0,
    gen_spread="uniform",
)

# What each profile is for (`simulate --show`, `run --help`).
PROFILE_ABOUT: Mapping[str, str] = {
    "default": "the quick start: tasks finish in 0.6-2.3 s, no faults",
    "fast": "for tests: tasks finish within ~0.25 s",
    "chaos": "every fault, often enough to be seen in a batch of a few dozen jobs",
    "realistic": "documented upstream timings: queued 5-10 s, generation 1-5 min",
    "published": "the default tier's published limits per account (submit 5/s burst 50, query "
    "50/s burst 50, X-RateLimit-* headers), queued 5-10 s, generation 1-5 min (lognormal)",
    "published-fast": "the published limits with generation 20-40 s, queued 1-3 s (benches)",
}

# The run timings (omni_batch.running.options) that fit each profile's tasks: "fast" is FAST (polls
# every 0.3 s, gives up after 120 s), "documented" the real API's Policy() (first poll after
# 5 s, every 10 s, gives up after 900 s).
PROFILE_TIMINGS: Mapping[str, Literal["fast", "documented"]] = {
    "default": "fast",
    "fast": "fast",
    "chaos": "fast",
    "realistic": "documented",
    "published": "documented",
    "published-fast": "documented",
}


def run_policy(profile: str, config: SimConfig | None = None) -> Policy:
    """The timings `run --simulate PROFILE` uses unless told otherwise: the profile's, with
    ``max_wait`` raised to twice the longest task ``config``'s knobs allow."""
    from omni_batch.running.options import FAST, Policy

    if profile not in PROFILES:
        SimConfig.from_profile(profile)  # the one-line error, with its hint
    policy = FAST if PROFILE_TIMINGS[profile] == "fast" else Policy()
    if config is not None:
        longest = config.queue_max + config.gen_max + config.latency + config.slow_delay
        if policy.max_wait < 2 * longest:
            policy = policy.scaled(max_wait=2 * longest)
    return policy
