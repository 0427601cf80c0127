"""The ToAPIs stand-in over HTTP: the API listener (submit, status, /_sim/stats) and a separate
CDN listener for video links, started with ``start_simulator`` or ``serve_in_thread``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import ipaddress
import math
import random
import socket
import sys
import threading
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from aiohttp import web

from omni_batch.errors import UsageError
from omni_batch.planning.catalog import BODY_FIELDS, Catalog, load_catalog
from omni_batch.simulator.cdn import CdnHost, video_url
from omni_batch.simulator.config import SimConfig
from omni_batch.simulator.hostile import (
    echo_query,
    echo_text,
    gzip_bomb,
    json_text,
    retry_after_header,
    send_stream,
)
from omni_batch.simulator.saved import SavedTasks
from omni_batch.simulator.state import (
    FAIL_MESSAGE,
    AccountState,
    Bucket,
    SimState,
    Task,
    retry_after,
)

SUBMIT_PATH = "/v1/videos/generations"
STATS_PATH = "/_sim/stats"
BALANCE_PATH = "/v1/balance"  # the key's (issue #15)
USER_BALANCE_PATH = "/v1/user/balance"  # the account's
MODELS_PATH = "/v1/models"

# Which budget each API route spends (issue #14): (method, route as registered) → category.
# A route not listed is a query (a GET of some account resource). Add new routes here.
ROUTE_CATEGORY: dict[tuple[str, str], str] = {
    ("POST", SUBMIT_PATH): "async_submit",
    ("GET", SUBMIT_PATH + "/{task_id}"): "async_query",  # by task id or client_business_id
    ("GET", "/v1/balance"): "async_query",
    ("GET", "/v1/user/balance"): "async_query",
    ("GET", "/v1/models"): "async_query",
}

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    422: "content_policy_violation",
    429: "rate_limit_exceeded",
}
_STRING_CODES = {
    400: "invalid_request",
    401: "invalid_api_key",
    402: "insufficient_quota",
    403: "model_not_allowed",
    404: "not_found",
    405: "method_not_allowed",
    409: "duplicate_client_business_id",
    422: "content_policy_violation",
    429: "rate_limit_exceeded",
    500: "internal_error",
    502: "bad_gateway",
    503: "service_unavailable",
}


_AFTER_CREATE = (500, 502, 503, 504, 520, 522, 524)


def fields_resolution(body: dict[str, Any], rules: Any) -> str:
    """The resolution a body asks for, the model's default when it names none."""
    value = body.get("resolution", rules.defaults.get("resolution"))
    return value if isinstance(value, str) else ""


class _Reject(Exception):
    """An error answer: rendered by the middleware in the contract's error body."""

    def __init__(self, status: int, message: str, retry: int | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.retry, self.extra = status, message, retry, extra


class _Drop(Exception):
    """Close the connection without answering."""


class _Call:
    """One authenticated API call's standing with its account's budgets (in _CALL)."""

    __slots__ = (
        "account", "at", "category", "charged", "disguised", "reason", "refused_by", "uncharged"
    )  # fmt: skip

    def __init__(self, account: AccountState, category: str, at: float) -> None:
        self.account, self.category, self.at = account, category, at
        self.charged = False  # took its tokens (given back if it ends a 429 after all)
        self.refused_by: str | None = None  # "rate" (its category) or "shared" (rate/burst)
        self.reason = "other"  # why a 429: rate, shared_rate, concurrency, storm, forced
        self.disguised = False  # a concurrency 429 dressed as a rate 429 (concurrency_says)
        self.uncharged = False  # counted nowhere though not a 429 (503 rate_limit_unavailable)


def _category(request: web.Request) -> str:
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else request.path
    return ROUTE_CATEGORY.get((request.method, route), "async_query")


def _per_minute(rate: float) -> str:
    """X-RateLimit-Limit: requests per minute, a whole number when it is one."""
    value = rate * 60
    return str(round(value)) if abs(value - round(value)) < 1e-9 else f"{value:.6g}"


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


_RID: contextvars.ContextVar[str] = contextvars.ContextVar("rid", default="")
# the API call being answered (set once it is authenticated); its own per request
_CALL: contextvars.ContextVar[_Call | None] = contextvars.ContextVar("call", default=None)


def _bearer(request: web.Request) -> str:
    """The token the caller sent (valid or not), or ""."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


class Simulator:
    """One running simulator: its URLs, its key(s), its counters.

    With ``saved`` (see ``saved.py``) its tasks outlive it: the tasks of an earlier simulator
    on the same folder are known again, and it listens on that one's ports when they are free.
    """

    def __init__(
        self,
        config: SimConfig | None = None,
        catalog: Catalog | None = None,
        saved: SavedTasks | None = None,
    ):
        self.config = config or SimConfig()
        self.catalog = catalog or load_catalog()
        self.saved = saved
        self.state = SimState(self.config, saved=saved)
        self._ports_claimed = saved is None
        self.keys: tuple[str, ...] = self.config.accepted_keys()
        self.key: str = self.keys[0]
        self.base_url = ""
        self.cdn_url = ""
        self.cdn_urls: dict[str, str] = {}  # extra CDN listeners (video_host, cdn_redirect)
        self.video_base = ""  # where video links point: the CDN, or video_host
        self._not_before: dict[str, float] = {}  # key → when its last 429 said to come back
        self._revoked = self.config.revoked_after()  # key → requests before its 401s
        self._key_requests: Counter[str] = Counter()  # requests of each revocable key
        # API faults come in request arrival order; the CDN draws from its own stream, so
        # downloads never shift which API request gets a fault.
        self._cdn = CdnHost(self.state)
        self._rng = random.Random(f"omni-sim-requests/{self.config.seed}")
        # the submit path's money faults draw from their own stream (see SimConfig)
        self._money_rng = random.Random(f"omni-sim-money/{self.config.seed}")
        self._after_create = 0
        self._progress_rng = random.Random(f"omni-sim-progress/{self.config.seed}")
        self._runners: list[web.AppRunner] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: int | None = None

    # -- public -------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """The counters, as GET /_sim/stats returns them; safe to call from any thread."""
        loop = self._loop
        if loop is not None and loop.is_running() and threading.get_ident() != self._thread:

            async def snapshot() -> dict[str, Any]:
                return self.state.stats()

            return asyncio.run_coroutine_threadsafe(snapshot(), loop).result(10)
        return self.state.stats()

    async def start(self, host: str = "127.0.0.1", port: int = 0, cdn_port: int = 0) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        api = web.Application(middlewares=[self._api_middleware])
        api.router.add_post(SUBMIT_PATH, self._submit)
        api.router.add_get(SUBMIT_PATH + "/{task_id}", self._status)
        api.router.add_get(STATS_PATH, self._stats)
        api.router.add_get(BALANCE_PATH, self._balance)
        api.router.add_get(USER_BALANCE_PATH, self._balance)
        api.router.add_get(MODELS_PATH, self._models)
        cdn = self._cdn.app()
        # the ports a previous simulator on this folder handed out links for, when free
        before = None
        if self.saved is not None and not port and not cdn_port:
            before = self.saved.ports()
        try:
            self.base_url = await self._listen(api, host, port, before and before[0])
            self.cdn_url = await self._listen(cdn, host, cdn_port, before and before[1])
            await self._hostile_hosts(host)
        except BaseException:
            await self.stop()
            raise

    async def _hostile_hosts(self, host: str) -> None:
        """Extra CDN listeners where video_host / cdn_redirect name an address we can bind
        (127.0.0.2 is loopback too on Linux); a name or a foreign address gets none."""
        cfg = self.config
        port = self.cdn_url.rpartition(":")[2]
        for extra in dict.fromkeys((cfg.video_host, cfg.cdn_redirect)):
            if extra is None or extra == host:
                continue
            with contextlib.suppress(UsageError, ValueError):
                ipaddress.ip_address(extra)  # only addresses: a name is not bound
                self.cdn_urls[extra] = await self._listen(self._cdn.app(), extra, 0)
        self.video_base = self.cdn_url
        if cfg.video_host is not None:
            self.video_base = self.cdn_urls.get(cfg.video_host, f"http://{cfg.video_host}:{port}")
        if cfg.cdn_redirect is not None:
            self._cdn.redirect_to = self.cdn_urls.get(
                cfg.cdn_redirect, f"http://{cfg.cdn_redirect}:{port}"
            )

    async def stop(self) -> None:
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
        if self.saved is not None:
            self.saved.close()

    def _claim_ports(self) -> None:
        """At the first API call: this simulator is the one in use (not a refused second run
        on a busy folder), so its ports are the ones to listen on next time."""
        self._ports_claimed = True
        assert self.saved is not None
        api, cdn = (int(url.rsplit(":", 1)[1]) for url in (self.base_url, self.cdn_url))
        with contextlib.suppress(OSError):  # a nicety: a new port only breaks old links
            self.saved.save_ports(api, cdn)

    async def _listen(
        self, app: web.Application, host: str, port: int, preferred: int | None = None
    ) -> str:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            sock = None
            if preferred:
                with contextlib.suppress(OSError):  # taken since: any free port will do
                    sock = socket.create_server((host, preferred), family=family)
            sock = sock or socket.create_server((host, port), family=family)
        except OSError as exc:
            raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        self._runners.append(runner)
        await runner.setup()
        await web.SockSite(runner, sock).start()
        bound = sock.getsockname()[1]
        return f"http://[{host}]:{bound}" if family == socket.AF_INET6 else f"http://{host}:{bound}"

    # -- API plumbing ---------------------------------------------------------------------------

    @web.middleware
    async def _api_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == STATS_PATH:
            return await handler(request)
        if not self._ports_claimed:
            self._claim_ports()
        counts = self.state.counts
        counts["requests"] += 1
        number = counts["requests"]
        rid = f"req_{self.config.seed}_{number:08d}"
        token = _bearer(request)
        if "header" in self.config.echo_key and token:
            rid = f"{rid}-{token}"  # a gateway that traces requests by their credentials
        _RID.set(rid)
        _CALL.set(None)
        try:
            response = await handler(request)
        except _Drop:
            counts["dropped"] += 1
            self._settle(0)
            if request.transport is not None:
                request.transport.close()
            return web.Response()  # never written: aiohttp sees the closed transport
        except ConnectionResetError:  # the client went away mid-request (killed, timed out)
            counts["client_gone"] += 1
            self._settle(0)
            return web.Response()
        except _Reject as exc:
            response = self._error(exc, rid, number, token)
        except web.HTTPException as exc:  # unknown path, wrong method
            response = self._error(_Reject(exc.status, exc.reason), rid, number, token)
        self._settle(response.status)
        if not response.prepared:  # a streamed answer sent its own
            response.headers["X-Request-Id"] = rid
            self._rate_headers(response)
        counts[f"status_{response.status}"] += 1
        return response

    def _settle(self, status: int) -> None:
        """A call that took tokens and was answered 429 (or 503 rate_limit_unavailable) gives
        them back; any other is counted as accepted, at the instant it was let in."""
        call = _CALL.get()
        if call is None:
            return
        if status == 429:
            call.account.limited[call.category][call.reason] += 1
        if not call.charged:
            return
        call.charged = False
        if status == 429 or call.uncharged:
            call.account.refund(call.category)
        else:
            call.account.accept(call.category, call.at)

    def _rate_headers(self, response: web.StreamResponse) -> None:
        """X-RateLimit-* of the bucket that speaks for this call: the one that refused it,
        else its category's, else the shared rate/burst one (no Category then)."""
        mode = self.config.rate_headers
        call = _CALL.get()
        if mode == "none" or call is None or (mode == "limited" and response.status != 429):
            return
        bucket: Bucket | None = call.account.buckets.get(call.category)
        category: str | None = call.category
        if call.refused_by == "shared" or bucket is None:
            bucket, category = call.account.shared, None
        if bucket is None:
            return
        now = self.state.clock()
        remaining = 0 if call.disguised else bucket.remaining(now)
        response.headers["X-RateLimit-Limit"] = _per_minute(bucket.rate)
        response.headers["X-RateLimit-Remaining"] = str(remaining)
        response.headers["X-RateLimit-Reset"] = str(math.ceil(bucket.full_at(now) - 1e-9))
        if category is not None:
            response.headers["X-RateLimit-Category"] = category

    def _error(self, exc: _Reject, rid: str, number: int, token: str = "") -> web.Response:
        cfg = self.config
        style = cfg.error_code
        as_string = style == "string" or (style == "mixed" and number % 2 == 0)
        status = exc.status
        code: int | str = _STRING_CODES.get(status, str(status)) if as_string else status
        message = exc.message
        if token and ("error" in cfg.echo_key or "text" in cfg.echo_key):
            message = f"{message} ({echo_text(token)})"
        retry = exc.retry
        if status == 429 and cfg.retry_after_value is not None:
            retry = cfg.retry_after_value
        headers = None
        if retry is not None:
            value, until = retry_after_header(retry, cfg.retry_after_form, self.state.clock())
            headers = {"Retry-After": value}
            if status == 429 and token in self.state.keys:
                self._not_before[token] = until
        if "text" in cfg.echo_key:  # a proxy's plain-text error page
            return web.Response(status=status, text=f"error {status}: {message}\n", headers=headers)
        error = {"code": code, "message": message, "type": _TYPES.get(status, "internal_error")}
        body = {"error": {**error, **exc.extra}, "request_id": rid}
        return self._json(body, status, headers, token)

    def _json(
        self,
        body: Any,
        status: int = 200,
        headers: dict[str, str] | None = None,
        token: str | None = None,
    ) -> web.Response:
        style = self.config.echo_json
        if not self.config.echo_key or style == "ascii":
            return web.json_response(body, status=status, headers=headers)
        text = json_text(body, style, token)
        return web.Response(
            text=text, status=status, headers=headers, content_type="application/json"
        )

    def _authorize(self, request: web.Request) -> str:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if not token.strip() or scheme.lower() != "bearer":
            raise _Reject(401, "missing API key: send Authorization: Bearer <key>")
        token = token.strip()
        if token not in self.state.keys:
            raise _Reject(401, "invalid API key")
        limit = self._revoked.get(token)
        if limit is not None:
            self._key_requests[token] += 1
            if self._key_requests[token] > limit:
                raise _Reject(401, "invalid API key: this key was revoked")
        return token

    async def _gate(self, request: web.Request, kind: str = "") -> tuple[str, bool]:
        """What every API call passes: latency, auth, limits, then the seeded request faults.

        Returns the caller's key and whether a submit should turn out ambiguous."""
        cfg, state = self.config, self.state
        if cfg.latency:
            await asyncio.sleep(cfg.latency)
        key = self._authorize(request)
        ks = state.keys[key]
        now = state.clock()
        call = _Call(ks.account, _category(request), now)
        _CALL.set(call)
        if now < self._not_before.get(key, 0.0) - 0.05:
            state.counts["early_after_429"] += 1  # came back before Retry-After said
        if cfg.limit_only in ("all", kind):  # counted among the requests it limits
            counter = "requests" if cfg.limit_only == "all" else f"{kind[:-1]}_requests"
            number, after = state.counts[counter], cfg.limit_after
            if number <= cfg.limit_first or (after is not None and number > after):
                state.counts["limited_forced"] += 1
                call.reason = "forced"
                raise _Reject(429, "too many requests", cfg.retry_after)
        if now < ks.storm_until:
            state.counts["limited_injected"] += 1
            call.reason = "storm"
            raise _Reject(429, "too many requests", retry_after(ks.storm_until - now))
        refused = ks.account.take(call.category, now)
        if refused is not None:
            state.counts["limited_rate"] += 1
            call.refused_by, wait = refused
            if call.refused_by == "shared":
                call.reason = "shared_rate"
                assert cfg.rate is not None
                message = f"rate limit of {cfg.rate:g} requests/s exceeded"
            else:
                call.reason = "rate"
                message = self._rate_message(call)
            raise _Reject(429, message, retry_after(wait))
        call.charged = True
        # Always the same number of draws, so a request's faults depend only on its position.
        r_slow, r_drop, r_5xx, r_kind, r_429, r_ambiguous = (self._rng.random() for _ in range(6))
        if r_slow < cfg.p_slow:
            state.counts["slow"] += 1
            await asyncio.sleep(cfg.slow_delay)
        if r_drop < cfg.p_drop:
            raise _Drop
        if r_5xx < cfg.p_5xx:
            status = (500, 502, 503)[min(2, int(r_kind * 3))]
            raise _Reject(status, "upstream error, please retry")
        if r_429 < cfg.p_429:
            ks.storm_until = now + cfg.storm_s
            state.counts["limited_injected"] += 1
            call.reason = "storm"
            raise _Reject(429, "too many requests", max(cfg.retry_after, retry_after(cfg.storm_s)))
        return key, r_ambiguous < cfg.p_ambiguous

    def _rate_message(self, call: _Call) -> str:
        """The message of a 429 from a category bucket (a disguised concurrency 429's too)."""
        bucket = call.account.buckets.get(call.category)
        if bucket is None:
            return "rate limit exceeded"
        return (
            f"rate limit exceeded: {call.category} allows "
            f"{_per_minute(bucket.rate)} requests per minute"
        )

    # -- API endpoints -------------------------------------------------------------------------

    async def _submit(self, request: web.Request) -> web.StreamResponse:
        cfg, state = self.config, self.state
        state.counts["submit_requests"] += 1
        key, ambiguous = await self._gate(request, "submits")
        try:
            body = await request.json()
        except ValueError:
            raise _Reject(400, "request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise _Reject(400, "request body must be a JSON object")
        model = body.get("model")
        if model is None:
            raise _Reject(400, "model: required")
        rules = self.catalog.get(model) if isinstance(model, str) else None
        if rules is None:
            raise _Reject(400, f"model: {self.catalog.unknown_model(model)}")
        problems = rules.check_body(body)
        if problems:
            raise _Reject(400, "; ".join(f"{name}: {message}" for name, message in problems))
        if model in cfg.blocked_models:
            raise _Reject(403, f"model {model} is not allowed for this API key")
        if cfg.p_reject and self._rng.random() < cfg.p_reject:
            raise _Reject(422, "the prompt was rejected by the content policy")
        cbid = body.get("client_business_id") if cfg.cbid != "ignored" else None
        if cbid is not None and (not isinstance(cbid, str) or not 1 <= len(cbid) <= 128):
            raise _Reject(400, "client_business_id: must be a string of 1-128 characters")
        ks = state.keys[key]
        account = ks.account
        if cbid is not None and cbid in account.cbids and cfg.cbid in ("on", "no_lookup"):
            state.counts["duplicate_cbids"] += 1
            existing = state.tasks[account.cbids[cbid]]
            if cfg.duplicate_cbid == "existing":
                return self._json(self._submitted(existing), token=key)
            if cfg.duplicate_cbid == "conflict_bare":  # a 409 that names no task
                raise _Reject(409, f"client_business_id {cbid!r} was already used")
            named = "video_bogus" if cfg.duplicate_cbid == "conflict_bogus" else existing.id
            raise _Reject(
                409,
                f"client_business_id {cbid!r} was already used for task {named}",
                task_id=named,
            )
        r_down, r_after, r_shape = (self._money_rng.random() for _ in range(3))
        if r_down < cfg.p_limiter_down:
            state.counts["limiter_down"] += 1
            call = _CALL.get()
            if call is not None:  # the limiter is down: this call is counted nowhere
                call.uncharged = True
            raise _Reject(
                503,
                "the rate limiter is unavailable; nothing was accepted",
                type="rate_limit_unavailable",
            )
        if cfg.quota_after is not None and ks.created >= cfg.quota_after:
            raise _Reject(402, "insufficient quota: top up your balance to create more tasks")
        now = state.clock()
        duration = body.get("duration", rules.defaults.get("duration"))
        credits = self.credits_for(model, fields_resolution(body, rules), duration)
        left = state.credits_left(now)
        if left is not None and credits > left + 1e-9:
            state.counts["balance_refused"] += 1
            raise _Reject(
                402,
                f"insufficient balance: this task costs {credits:g} credits, "
                f"{max(left, 0):g} remain; top up to create more tasks",
            )
        if cfg.max_active is not None and account.active_count(now) >= cfg.max_active:
            state.counts["limited_active"] += 1
            call = _CALL.get()
            assert call is not None
            call.reason = "concurrency"
            if not cfg.concurrency_says:  # reads like a submit-rate 429 (Remaining 0 too)
                call.disguised = True
                message, bucket = self._rate_message(call), account.buckets.get(call.category)
                if bucket is None and account.shared is not None and cfg.rate is not None:
                    call.refused_by, bucket = "shared", account.shared
                    message = f"rate limit of {cfg.rate:g} requests/s exceeded"
                wait = 1.0 / bucket.rate if bucket is not None else cfg.retry_after
                raise _Reject(429, message, retry_after(wait))
            wait = account.active[0] - now if account.active else cfg.retry_after  # max_active=0
            raise _Reject(
                429, f"too many tasks in progress (limit {cfg.max_active})", retry_after(wait)
            )
        # Interned so 20,000 tasks share one copy of each model/ratio/resolution string.
        fields = {
            name: body.get(name, rules.defaults.get(name)) for name in ("model", *BODY_FIELDS)
        }
        fields = {k: sys.intern(v) if isinstance(v, str) else v for k, v in fields.items()}
        try:
            task = state.create(
                key, body, {**fields, "client_business_id": cbid, "credits": credits}, now
            )
        except OSError as exc:  # the state folder cannot be written: no task was made
            raise _Reject(500, f"simulator: cannot save its state: {exc}") from None
        if ambiguous:
            state.counts["ambiguous"] += 1
            raise _Drop
        if r_after < cfg.p_5xx_after_create:
            state.counts["5xx_after_create"] += 1
            status = cfg.after_create_status or _AFTER_CREATE[self._after_create % 7]
            self._after_create += 1
            raise _Reject(status, "upstream error, please retry")
        if cfg.submit_answer_delay:
            await asyncio.sleep(cfg.submit_answer_delay)
        if r_shape < cfg.p_unrecognised:
            state.counts["unrecognised"] += 1
            return self._json({"code": 0, "result": {"job": {"uuid": task.id}}}, token=key)
        return self._json(self._submitted(task), token=key)

    def _submitted(self, task: Task) -> dict[str, Any]:
        if task.submit_shape == "legacy":
            return {"code": 200, "data": [{"status": "submitted", "task_id": task.id}]}
        out = {
            "id": task.id,
            "object": "generation.task",
            "model": task.model,
            "status": task.queued_word,
            "progress": 0,
            "created_at": int(task.created),
        }
        if task.cbid is not None:
            out["client_business_id"] = task.cbid
        return out

    async def _status(self, request: web.Request) -> web.StreamResponse:
        state = self.state
        state.counts["poll_requests"] += 1
        key, _ = await self._gate(request, "polls")
        ident = request.match_info["task_id"]
        task = state.find(key, ident)
        if task is not None and task.misses < self.config.unknown_polls:
            task.misses += 1
            task = None
        if task is None:
            state.counts["polls_unknown"] += 1
            raise _Reject(404, f"task {ident} not found")
        now = state.clock()
        status = task.status(now)
        state.record_poll(task, status in ("completed", "failed"))
        cfg = self.config
        if cfg.status_redirect:  # following it would carry the key to the video host
            return web.Response(status=307, headers={"Location": self._video_url(task)})
        view = self._view(task, status, now)
        if cfg.status_bomb_mb:  # valid JSON, after a gigabyte of whitespace
            tail = json_text(view, cfg.echo_json, key).encode("utf-8")
            length, pieces = await asyncio.to_thread(gzip_bomb, cfg.status_bomb_mb, tail)
            headers = {
                "Content-Type": "application/json",
                "Content-Encoding": "gzip",
                "X-Request-Id": _RID.get(),
            }
            return await send_stream(request, headers, length, pieces)
        return self._json(view, token=key)

    def _video_url(self, task: Task, expiry: float | None = None) -> str:
        url = video_url(self.video_base or self.cdn_url, task, expiry)
        if "url" in self.config.echo_key:  # a signed link that carries the caller's key
            url = f"{url}&{echo_query(task.key)}"
        return url

    def _view(self, task: Task, status: str, now: float) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": task.id,
            "object": "generation.task",
            "model": task.model,
            "status": status,
            "progress": 0,
            "created_at": int(task.created),
        }
        if task.cbid is not None:
            out["client_business_id"] = task.cbid
        if status == "in_progress":
            span = task.done - task.started
            fraction = (now - task.started) / span
            if self.config.progress_noise:
                noise = self._progress_rng.uniform(-1.0, 1.0) * self.config.progress_noise
                fraction += noise
            task.shown = max(task.shown, min(99, max(1, int(100 * fraction))))
            out["progress"] = task.shown
        elif status == "failed":
            out["progress"] = 100
            out["completed_at"] = int(task.done)
            message = FAIL_MESSAGE
            if "error" in self.config.echo_key:
                message = f"{message} ({echo_text(task.key)})"
            out["error"] = {"code": "generation_failed", "message": message}
        elif status == "completed":
            if now >= task.expiry and self.config.refresh_links:
                self.state.new_link(task, now + self.config.link_ttl)
            cfg = self.config
            task.answers += 1
            url: str | None = self._video_url(task)
            expiry = task.expiry
            if task.answers <= cfg.no_url_answers:
                url = None
            elif task.answers <= cfg.no_url_answers + cfg.stale_link_answers:
                expiry = min(expiry, now - 1.0)
                url = self._video_url(task, expiry)
            out.update(progress=100, completed_at=int(task.done), expires_at=int(expiry))
            if url is not None and task.result_shape == "result":
                out["result"] = {"type": "video", "data": [{"url": url, "format": "mp4"}]}
            elif url is not None:
                out[task.result_shape] = url
        return out

    # -- money (issue #15) ---------------------------------------------------------------------

    def credits_for(self, model: str, resolution: str, duration: Any) -> float:
        """Credits a task costs: the catalog's USD per second x credits_per_usd x seconds (a
        model or resolution without a price costs nothing here)."""
        rules = self.catalog.get(model)
        price = rules.price(resolution) if rules is not None else None
        if price is None or not isinstance(duration, int):
            return 0.0
        return round(price * self.config.credits_per_usd * duration, 6)

    async def _balance(self, request: web.Request) -> web.StreamResponse:
        """GET /v1/balance (the key's use) and /v1/user/balance (the account's)."""
        key, _ = await self._gate(request)
        if not self.config.balance_endpoint:
            raise _Reject(404, f"{request.path} not found")
        cfg, state = self.config, self.state
        now = state.clock()
        per_usd = cfg.credits_per_usd
        mine = request.path == BALANCE_PATH
        used = state.credits_used(key if mine else None, now)
        left = state.credits_left(now)
        data = {
            "remain_credits": round(left, 6) if left is not None else 0,
            "used_credits": round(used, 6),
            "credits_per_usd": per_usd,
            "remain_balance": round(left / per_usd, 6) if left is not None else 0,
            "used_balance": round(used / per_usd, 6),
            "unlimited_quota": left is None,
        }
        state.counts["balance_requests"] += 1
        return self._json({"success": True, "data": data}, token=key)

    async def _models(self, request: web.Request) -> web.StreamResponse:
        """GET /v1/models?type=video: the models this key may use (no prices)."""
        key, _ = await self._gate(request)
        if not self.config.models_endpoint:
            raise _Reject(404, f"{request.path} not found")
        self.state.counts["model_requests"] += 1
        data = [
            {"id": name, "object": "model", "type": "video", "owned_by": "toapis"}
            for name in self.catalog.models
            if name not in self.config.blocked_models
        ]
        return self._json({"object": "list", "data": data}, token=key)

    async def _stats(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self.state.stats())


@contextlib.asynccontextmanager
async def start_simulator(
    config: SimConfig | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    cdn_port: int = 0,
    catalog: Catalog | None = None,
    state_dir: str | Path | None = None,
) -> AsyncIterator[Simulator]:
    """Run a simulator on this loop for the ``async with`` body; port 0 picks a free port.

    ``state_dir``: keep its tasks there, and know the tasks an earlier simulator kept there."""
    sim = Simulator(config, catalog, SavedTasks(state_dir) if state_dir is not None else None)
    await sim.start(host, port, cdn_port)
    try:
        yield sim
    finally:
        await sim.stop()


@contextlib.contextmanager
def serve_in_thread(
    config: SimConfig | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    cdn_port: int = 0,
    catalog: Catalog | None = None,
    state_dir: str | Path | None = None,
) -> Iterator[Simulator]:
    """Run a simulator on its own loop in a daemon thread (for tests that run the CLI)."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    box: dict[str, Any] = {}
    stop = asyncio.Event()

    async def main() -> None:
        try:
            async with start_simulator(config, host, port, cdn_port, catalog, state_dir) as sim:
                box["sim"] = sim
                ready.set()
                await stop.wait()
        except BaseException as exc:
            box["error"] = exc
            ready.set()

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(main())
            loop.run_until_complete(loop.shutdown_default_executor())  # clip renderers
        finally:
            loop.close()

    thread = threading.Thread(target=run, name="omni-batch-simulator", daemon=True)
    thread.start()
    ready.wait()
    if "error" in box:
        thread.join()
        raise box["error"]
    try:
        yield box["sim"]
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=10)
