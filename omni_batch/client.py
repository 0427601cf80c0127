"""The ToAPIs video task calls: every documented response shape in, one typed result out.

HTTP status (then ``error.type``) decides the error class; transport failures are split into
"provably not sent" and "may have arrived", because only the first is safe to resubmit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

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
)

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

    @property
    def final(self) -> bool:
        return self.status in FINAL


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


def _retry_after(headers: Any) -> float | None:
    try:
        value = float(headers.get("Retry-After", ""))
    except ValueError:
        return None
    return min(max(value, 0.0), 3600.0)


def _raise_for_status(status: int, headers: Any, body: Any, text: str) -> None:
    if 200 <= status < 300:
        return
    snippet = " ".join(text.split())[:200] or f"HTTP {status}"
    message, kind = _error_fields(body, snippet)
    kw = {"status": status, "error_type": kind, "request_id": _request_id(headers, body)}
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
    """The whole body, however many pieces it arrives in, but never more than MAX_BODY + 1."""
    declared = resp.content_length
    if declared is not None and declared <= MAX_BODY:
        return await resp.read()  # the usual answer: aiohttp stops at the declared length
    chunks, size = [], 0
    async for chunk in resp.content.iter_chunked(1 << 16):
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_BODY:
            break
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
    error = body.get("error") if isinstance(body.get("error"), dict) else {}
    progress = _number(body.get("progress"))
    task_id = body.get("id") or body.get("task_id")
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
    )


class ToapisClient:
    """Submit and status calls against one API root with one key, over a shared session.

    The key is attached per request, only to API calls: the session itself carries no
    credentials, so nothing else (video downloads) can leak it.
    """

    def __init__(
        self, session: aiohttp.ClientSession, base_url: str, api_key: str, timeout: float = 30.0
    ):
        self._session = session
        self._root = api_root(base_url)
        self._auth = {"Authorization": f"Bearer {api_key}"}
        self._key = api_key
        self._timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=min(timeout, 10.0))

    @property
    def root(self) -> str:
        return self._root

    async def _call(self, method: str, url: str, payload: dict | None = None) -> tuple[Any, Any]:
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
                status, headers = resp.status, resp.headers
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
        text = raw[:MAX_BODY].decode("utf-8", "replace")
        if self._key and self._key in text:  # a server that echoes the key must not put it
            text = text.replace(self._key, "[redacted]")  # into our reports and logs
        try:
            body = json.loads(text) if text.strip() else None
        except ValueError:
            body = None
        _raise_for_status(status, headers, body, text)
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
            answer, request_id = await self._call("POST", self._root + GENERATIONS, payload)
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


__all__ = ["ApiError", "Submitted", "TaskState", "ToapisClient", "api_root"]
