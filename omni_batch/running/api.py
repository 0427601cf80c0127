"""The ToAPIs video task calls: every documented response shape in, one typed result out.

HTTP status (then ``error.type``) decides the error class; transport failures are split into
"provably not sent" and "may have arrived", because only the first is safe to resubmit.
"""

from __future__ import annotations

import datetime
import email.utils
import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypedDict
from urllib.parse import quote, urlsplit

import aiohttp

from omni_batch.errors import (
    Ambiguous,
    ApiError,
    AuthError,
    BadResponse,
    GatewayError,
    NotAccepted,
    NotSent,
    QuotaError,
    RateLimited,
    RequestRejected,
    ServerError,
    UnrecognisedAnswer,
    UsageError,
)
from omni_batch.running.budgets import QUERY, SUBMIT, RateHeaders, parse_rate_headers
from omni_batch.running.options import Policy
from omni_batch.running.redact import Redactor

DEFAULT_BASE_URL = "https://toapis.com"
GENERATIONS = "/v1/videos/generations"
MAX_BODY = 1 << 20  # an API answer larger than 1 MiB is not one we can trust
REQUEST_ID_HEADERS = (
    "X-Request-Id",
    "X-Request-ID",
    "Request-Id",
    "X-Trace-Id",
    "X-Amzn-RequestId",
)
FINAL = frozenset({"completed", "failed"})
# a proxy or CDN in front of the API lost the upstream's answer (Cloudflare's 52x included)
GATEWAY_STATUSES = frozenset({502, 504, *range(520, 528), 530})
# error types of a 5xx that refused the request before any work was done
NOT_ACCEPTED_TYPES = frozenset({"rate_limit_unavailable"})
RAW_KEPT = 1000  # characters of an unrecognised submit answer kept for the record


def api_root(base_url: str) -> str:
    """``https://toapis.com``, ``…/`` and ``…/v1`` all mean the same API root."""
    root = base_url.strip().rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root


_HOSTNAME = re.compile(r"(?i)^(?!-)[a-z0-9_-]{1,63}(?<!-)(\.(?!-)[a-z0-9_-]{1,63}(?<!-))*\.?$")


def check_base_url(base_url: str, name: str = "--base-url") -> str:
    """The API root of ``base_url``, or a UsageError saying in one line why it cannot be one.

    ``name`` says where the value came from (an option, an environment variable). A URL that
    carries credentials is never repeated back: its user:password part is masked.
    """
    text = base_url.strip()
    # shown without what may hold a secret: user:password@, a query, a fragment
    shown = re.sub(r"[?#].*", "?…", re.sub(r"//[^/?#]*@", "//***@", text), flags=re.S)

    def refuse(why: str) -> UsageError:
        return UsageError(f"{name} {shown!r}: {why}")

    if not text:
        raise UsageError(f"{name} is empty; give the API root, e.g. https://toapis.com")
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in text):
        raise refuse("contains spaces or control characters")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        if "port" in str(exc).lower():
            raise refuse("the port must be a number from 1 to 65535") from None
        raise refuse(f"not a URL ({exc})") from None
    scheme = parts.scheme.lower()
    if not scheme or not parts.netloc:
        raise refuse("no scheme or host; write it in full, e.g. https://toapis.com")
    if scheme not in ("http", "https"):
        raise refuse(f"the API is reached over https:// (or http://), not {scheme}://")
    if "@" in parts.netloc:
        raise refuse(
            "credentials in the URL (user:password@) are never sent; "
            "put the API key in TOAPIS_API_KEY"
        )
    host = parts.hostname or ""
    if not host:
        raise refuse("no host")
    if ":" not in host and not _HOSTNAME.match(_idna(host)):
        raise refuse(f"{host!r} is not a host name")
    if port is not None and not 1 <= port <= 65535:
        raise refuse(f"port {port} is out of range (1-65535)")
    if parts.query or parts.fragment or "?" in text or "#" in text:
        raise refuse("an API root has no query (?…) or fragment (#…)")
    return api_root(text)


def _idna(host: str) -> str:
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError:
        return ""


@dataclass(frozen=True, slots=True)
class Submitted:
    task_id: str
    status: str
    request_id: str | None


@dataclass(frozen=True, slots=True)
class TaskState:
    """One status answer, normalised across the documented revisions."""

    status: str  # queued | in_progress | completed | failed | anything else (not final)
    task_id: str | None = None
    progress: int | None = None
    video_url: str | None = None
    expires_at: float | None = None
    completed_at: float | None = None
    error_code: str | None = None
    error_message: str | None = None
    request_id: str | None = None
    business_id: str | None = None  # the client_business_id the answer echoes, if any

    @property
    def final(self) -> bool:
        return self.status in FINAL


@dataclass(frozen=True, slots=True)
class Balance:
    """A balance answer (`GET /v1/balance` or `/v1/user/balance`), in US dollars."""

    remain_usd: float | None  # None when unlimited (or only credits without a rate came back)
    used_usd: float | None
    unlimited: bool
    credits_per_usd: float | None = None
    remain_credits: float | None = None
    used_credits: float | None = None
    request_id: str | None = None


def _amount(value: Any) -> float | None:
    """A number, or a number written as text ("12.5"); None for anything else."""
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    number = _number(value)
    return number if number is not None and math.isfinite(number) else None


def parse_balance(body: Any, request_id: str | None) -> Balance:
    """A balance answer at the top level or under `data`; raises BadResponse when it says
    neither how much is left nor that the quota is unlimited."""
    holder = body.get("data") if isinstance(body, dict) else None
    if not (isinstance(holder, dict) and _has_balance(holder)):
        holder = body if isinstance(body, dict) else {}
    per_usd = _amount(holder.get("credits_per_usd"))
    per_usd = per_usd if per_usd and per_usd > 0 else None
    credits = {k: _amount(holder.get(f"{k}_credits")) for k in ("remain", "used")}
    usd = {k: _amount(holder.get(f"{k}_balance")) for k in ("remain", "used")}
    for k in usd:
        credit = credits[k]
        if usd[k] is None and credit is not None and per_usd:
            usd[k] = credit / per_usd
    unlimited = holder.get("unlimited_quota") in (True, "true", "True", 1)
    if not unlimited and usd["remain"] is None:
        raise BadResponse(
            "balance answer says neither remain_balance nor remain_credits (with "
            "credits_per_usd) nor unlimited_quota",
            status=200,
            request_id=request_id,
        )
    return Balance(
        remain_usd=None if unlimited else usd["remain"],
        used_usd=usd["used"],
        unlimited=unlimited,
        credits_per_usd=per_usd,
        remain_credits=credits["remain"],
        used_credits=credits["used"],
        request_id=request_id,
    )


def _has_balance(holder: dict[str, Any]) -> bool:
    return any(
        k in holder for k in ("remain_balance", "remain_credits", "unlimited_quota", "used_credits")
    )


def parse_models(body: Any) -> tuple[str, ...]:
    """Model ids from `{"data": [{"id": ...}, ...]}` (or a bare list, or plain strings)."""
    items = body.get("data") if isinstance(body, dict) else body
    if isinstance(items, dict):
        items = items.get("models") or items.get("data")
    out = []
    for item in items if isinstance(items, list) else []:
        ident = item.get("id") or item.get("model") if isinstance(item, dict) else item
        if isinstance(ident, str) and ident.strip():
            out.append(ident.strip())
    return tuple(dict.fromkeys(out))


class _Headers:
    """The answer's headers as we read them: each value redacted when it is looked up."""

    __slots__ = ("_headers", "_redact")

    def __init__(self, headers: Any, redact: Redactor):
        self._headers, self._redact = headers, redact

    def get(self, name: str, default: Any = None) -> Any:
        value = self._headers.get(name)
        return default if value is None else self._redact(value)

    def __getitem__(self, name: str) -> str:
        return self._redact(self._headers[name])

    def __contains__(self, name: object) -> bool:
        return name in self._headers


def _request_id(headers: Any, body: Any) -> str | None:
    for name in REQUEST_ID_HEADERS:
        if value := headers.get(name):
            return str(value)[:200]
    if isinstance(body, dict):
        for holder in (body, body.get("error")):
            if isinstance(holder, dict) and holder.get("request_id"):
                return str(holder["request_id"])[:200]
    return None


def _error_fields(body: Any, fallback: str) -> tuple[str, str | None]:
    """(message, error type) from ``{"error": {...}}`` or whatever text came back."""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        message = str(err.get("message") or fallback)
        kind = err.get("type") or (err.get("code") if isinstance(err.get("code"), str) else None)
        return message[:500], (str(kind)[:100] if kind else None)
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])[:500], None
    return fallback, None


def _not_accepted(body: Any) -> bool:
    """Does a 503's error say the request was refused before any work (the submit limiter is
    down)? Only such an answer proves a submit created nothing; any other 5xx does not."""
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        return False
    return any(
        isinstance(err.get(name), str) and err[name].strip().lower() in NOT_ACCEPTED_TYPES
        for name in ("type", "code")
    )


_DELTA_SECONDS = re.compile(r"\s*(\d+)(\.\d*)?\s*$")
MAX_RETRY_AFTER = 1e9  # seconds (30 years): finite; Policy.max_retry_after is the real cap


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` in seconds from ``now``: delta-seconds or an HTTP-date (RFC 9110 §10.2.3,
    all three date formats); None when absent or unreadable. A date in the past means 0."""
    if not value:
        return None
    if match := _DELTA_SECONDS.match(value):  # a string of 400 digits is inf: the most
        seconds = min(float(match.group(1) + (match.group(2) or "")), MAX_RETRY_AFTER)
    else:
        try:
            when = email.utils.parsedate_to_datetime(value.strip())
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:  # asctime and "-0000" dates carry no zone: HTTP dates are GMT
            when = when.replace(tzinfo=datetime.UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _retry_after(headers: Any) -> float | None:
    return retry_after_seconds(headers.get("Retry-After"))


class _ErrorFields(TypedDict):
    """What every ApiError of an answer carries besides its message."""

    status: int
    error_type: str | None
    request_id: str | None


def _raise_for_status(status: int, headers: Any, body: Any, text: str) -> None:
    if 200 <= status < 300:
        return
    snippet = " ".join(text.split())[:200] or f"HTTP {status}"
    message, kind = _error_fields(body, snippet)
    kw: _ErrorFields = {
        "status": status,
        "error_type": kind,
        "request_id": _request_id(headers, body),
    }
    if status == 401:
        raise AuthError(message, **kw)
    if status == 402:
        raise QuotaError(message, **kw)
    if status == 429:
        raise RateLimited(message, retry_after=_retry_after(headers), **kw)
    if status in GATEWAY_STATUSES:
        raise GatewayError(message, **kw)
    if status == 503 and _not_accepted(body):
        raise NotAccepted(message, **kw)
    if status >= 500:
        raise ServerError(message, **kw)
    if 400 <= status < 500:
        rejected = RequestRejected(message, **kw)
        if status == 409 and isinstance(body, dict):  # "already used for task X": which task
            holder = body.get("error") if isinstance(body.get("error"), dict) else body
            rejected.task_id = parse_submit(holder) or parse_submit(body)
        raise rejected
    raise BadResponse(f"unexpected HTTP {status}: {message}", **kw)


async def _read_capped(resp: aiohttp.ClientResponse) -> bytes:
    """The whole decoded body, however many pieces it arrives in, but never much more than
    MAX_BODY: reading stops once MAX_BODY + 1 decoded bytes are in.

    Content-Length counts the bytes on the wire: for a compressed answer (Content-Encoding)
    it says nothing about the decoded size (1 MiB of gzip inflates to 1 GiB), so only an
    uncompressed answer may be read whole. aiohttp (>= 3.13.3) inflates in bounded steps as
    we read, so streaming keeps memory at the cap.
    """
    declared = resp.content_length
    encoding = resp.headers.get("Content-Encoding")
    if declared is not None and declared <= MAX_BODY and encoding in (None, "", "identity"):
        return await resp.read()  # the usual answer: aiohttp stops at the declared length
    chunks, size = [], 0
    while size <= MAX_BODY:
        chunk = await resp.content.read(min(1 << 16, MAX_BODY + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _first(data: Any) -> Any:
    if isinstance(data, list):
        return data[0] if data else None
    return data


def parse_submit(body: Any) -> str | None:
    """The task id: ``id``, else ``task_id``, else ``data[0].task_id``."""
    if not isinstance(body, dict):
        return None
    for candidate in (body.get("id"), body.get("task_id")):
        if isinstance(candidate, str) and candidate:
            return candidate
    inner = _first(body.get("data"))
    if isinstance(inner, dict) and isinstance(inner.get("task_id"), str) and inner["task_id"]:
        return inner["task_id"]
    return None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def parse_status(body: Any, request_id: str | None) -> TaskState:
    """A status body in any documented shape; raises BadResponse when it has no status."""
    if (
        isinstance(body, dict)
        and "status" not in body
        and isinstance(_first(body.get("data")), dict)
    ):
        body = _first(body["data"])  # the legacy envelope, seen on submit, tolerated here too
    if not isinstance(body, dict) or not isinstance(body.get("status"), str):
        raise BadResponse("status answer has no `status`", status=200, request_id=request_id)
    status = body["status"].strip().lower()
    if status == "submitted":
        status = "queued"
    result = body.get("result")
    url = None
    if isinstance(result, dict) and isinstance(item := _first(result.get("data")), dict):
        url = item.get("url")
    url = url or body.get("url") or body.get("video_url")
    error = body.get("error")
    if not isinstance(error, dict):
        error = {}
    progress = _number(body.get("progress"))
    task_id = body.get("id") or body.get("task_id")
    meta = body.get("metadata")
    if not isinstance(meta, dict):
        meta = {}
    cbid = body.get("client_business_id") or meta.get("client_business_id")
    return TaskState(
        status=status,
        task_id=str(task_id) if isinstance(task_id, str | int) and task_id else None,
        progress=int(progress) if progress is not None else None,
        video_url=url if isinstance(url, str) and url else None,
        expires_at=_number(body.get("expires_at")),
        completed_at=_number(body.get("completed_at")),
        error_code=str(error["code"]) if error.get("code") is not None else None,
        error_message=str(error.get("message"))[:500] if error.get("message") else None,
        request_id=request_id,
        business_id=str(cbid) if isinstance(cbid, str | int) and cbid else None,
    )


class ToapisClient:
    """Submit and status calls against one API root with one key, over a shared session.

    The key is attached per request, only to API calls: the session itself carries no
    credentials, so nothing else (video downloads) can leak it.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        api_key: str,
        timeout: float = Policy.request_timeout,
        *,
        redact: Redactor | None = None,
    ):
        self._session = session
        self._root = check_base_url(base_url, "base URL")
        self._auth = {"Authorization": f"Bearer {api_key}"}
        # every piece of server text passes through it; with several accounts, one that knows
        # every key (a server may echo another key than the one a request carried)
        self.redact = redact if redact is not None else Redactor(api_key)
        self._timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=min(timeout, 10.0))
        # told the rate-limit headers of every answer: (category of the call, what they said)
        self.on_limits: Callable[[str, RateHeaders], None] | None = None

    @property
    def root(self) -> str:
        return self._root

    async def _call(
        self, method: str, url: str, payload: dict | None = None, *, category: str = QUERY
    ) -> tuple[Any, Any]:
        try:
            async with self._session.request(
                method,
                url,
                json=payload,
                headers=self._auth,
                timeout=self._timeout,
                allow_redirects=False,
            ) as resp:
                raw = await _read_capped(resp)
                status, headers = resp.status, _Headers(resp.headers, self.redact)
        except aiohttp.ClientConnectorError as exc:  # no connection: nothing was sent
            raise NotSent(f"cannot connect to {self._root}: {exc.os_error or exc}") from None
        except aiohttp.ConnectionTimeoutError:
            raise NotSent(f"connecting to {self._root} timed out") from None
        except TimeoutError:
            raise Ambiguous(
                f"no answer from {self._root} within {self._timeout.total:g} s"
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise Ambiguous(f"connection to {self._root} lost: {type(exc).__name__}") from None
        limits = parse_rate_headers(headers)
        if self.on_limits is not None and limits.any and status != 429:
            self.on_limits(category, limits)
        text = raw[:MAX_BODY].decode("utf-8", "replace")
        try:
            body = json.loads(text) if text.strip() else None
        except (ValueError, RecursionError):
            body = None
        # A server may echo the key (plain, JSON-escaped, URL-encoded, base64...) in any
        # field; nothing it sent reaches a report, log or message without this pass.
        try:
            text, body = self.redact.json_text(text, body)
        except RecursionError:  # nested too deep to walk: unusable anyway
            text, body = self.redact(text), None
        try:
            _raise_for_status(status, headers, body, text)
        except RateLimited as exc:
            exc.limits, exc.category = limits, limits.category or category
            raise
        request_id = _request_id(headers, body)
        if len(raw) > MAX_BODY:
            raise BadResponse("answer larger than 1 MiB", status=status, request_id=request_id)
        if not isinstance(body, dict):
            raise BadResponse(
                f"answer is not a JSON object: {' '.join(text.split())[:120]!r}",
                status=status,
                request_id=request_id,
            )
        return body, request_id

    async def submit(
        self, body: dict[str, Any], client_business_id: str | None = None
    ) -> Submitted:
        """POST one generation. Raises ApiError subclasses, NotSent or Ambiguous; a 2xx (or any
        non-error answer) without a task id we recognise raises UnrecognisedAnswer: the task
        may exist and be billed, so it must never be sent again unflagged."""
        payload = dict(body)
        if client_business_id:
            payload["client_business_id"] = client_business_id
        try:
            answer, request_id = await self._call(
                "POST", self._root + GENERATIONS, payload, category=SUBMIT
            )
        except UnrecognisedAnswer:
            raise
        except BadResponse as exc:
            raise UnrecognisedAnswer(
                f"submit answer we cannot read: {exc.message}",
                raw=exc.message[:RAW_KEPT],
                status=exc.status,
                request_id=exc.request_id,
            ) from None
        task_id = parse_submit(answer)
        if task_id is None:
            raw = json.dumps(answer, ensure_ascii=False)[:RAW_KEPT]
            raise UnrecognisedAnswer(
                f"submit answer without a task id we recognise: {raw}",
                raw=raw,
                status=200,
                request_id=request_id,
            )
        inner = _first(answer.get("data")) if "status" not in answer else answer
        status = inner.get("status") if isinstance(inner, dict) else None
        return Submitted(task_id=task_id, status=str(status or "queued"), request_id=request_id)

    async def status(self, task_id: str) -> TaskState:
        """GET a task's state by task id (or by client_business_id where supported)."""
        answer, request_id = await self._call(
            "GET", f"{self._root}{GENERATIONS}/{quote(task_id, safe='')}"
        )
        return parse_status(answer, request_id)

    async def balance(self, account: bool = False) -> Balance:
        """`GET /v1/balance` (this key's balance) or, with ``account``, `/v1/user/balance`.
        A query call: errors as for status calls (a 404: the API has no such endpoint)."""
        path = "/v1/user/balance" if account else "/v1/balance"
        answer, request_id = await self._call("GET", self._root + path)
        return parse_balance(answer, request_id)

    async def models(self, kind: str = "video") -> tuple[str, ...]:
        """`GET /v1/models?type=video`: the ids of the models this key may use (no prices);
        raises BadResponse when the answer lists none we can read."""
        answer, request_id = await self._call("GET", f"{self._root}/v1/models?type={kind}")
        found = parse_models(answer)
        if not found:
            raise BadResponse("model list without a model id", status=200, request_id=request_id)
        return found


__all__ = ["ApiError", "Balance", "Submitted", "TaskState", "ToapisClient", "api_root"]
