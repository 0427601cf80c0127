"""Money (issue #15): the catalog's prices as a table kept with the run, the live spend of a
run (what stops submitting before ``budget.max_cost``), and the preflight checks of the
balance and the model list before the first submit.

Prices are the catalog's ``usd_per_second`` (estimates unless the user gave their own); a job
whose model or resolution has none is "price unknown": never counted as $0, and said so.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from omni_batch.errors import (
    ApiError,
    AuthError,
    BudgetReached,
    InsufficientBalance,
    ModelNotAvailable,
    OmniBatchError,
    TransportError,
)
from omni_batch.journal import IN_FLIGHT
from omni_batch.planning.catalog import Catalog, usd
from omni_batch.running.api import Balance


class BalanceSource(Protocol):
    """The two account calls the preflight makes (a client, or a client under the budget)."""

    async def models(self) -> tuple[str, ...]: ...
    async def balance(self, account: bool = False) -> Balance: ...


PRICES_META = "prices"  # journal meta key: the price table the run used (for the report)
PriceTable = Mapping[str, float | Mapping[str, float] | None]


def price_table(catalog: Catalog) -> dict[str, Any]:
    """model → usd_per_second (a number, {resolution: number}, or None: unknown)."""
    return {
        name: dict(rules.usd_per_second)
        if isinstance(rules.usd_per_second, Mapping)
        else rules.usd_per_second
        for name, rules in catalog.models.items()
    }


def price_of(table: PriceTable, model: str, resolution: str) -> float | None:
    price = table.get(model)
    if isinstance(price, Mapping):
        price = price.get(resolution)
    return float(price) if isinstance(price, int | float) else None


def load_table(text: str | None) -> dict[str, Any]:
    """The table kept in the journal's meta; {} when there is none (an older folder)."""
    if not text:
        return {}
    try:
        found = json.loads(text)
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


@dataclass
class Estimate:
    """What some jobs cost at the catalog's prices; unpriced jobs are counted apart."""

    jobs: int = 0
    cost_usd: float = 0.0
    unpriced: int = 0
    unpriced_models: set[str] = field(default_factory=set)
    models: set[str] = field(default_factory=set)

    def add(self, model: str, cost: float | None, jobs: int = 1) -> None:
        """``jobs`` jobs of ``model`` costing ``cost`` each (None: unknown)."""
        self.jobs += jobs
        self.models.add(model)
        if cost is None:
            self.unpriced += jobs
            self.unpriced_models.add(model)
        else:
            self.cost_usd += cost * jobs

    def text(self) -> str:
        """ "$4.32" / "$4.32 + 3 jobs of unknown price (veo3.1-fast)" / "price unknown"."""
        if self.jobs and self.unpriced == self.jobs:
            return "price unknown"
        out = usd(self.cost_usd)
        if self.unpriced:
            models = ", ".join(sorted(self.unpriced_models))
            out += f" + {self.unpriced:,} jobs of unknown price ({models})"
        return out


class Spend:
    """A run's spend as the catalog prices it: what the API has billed this output folder
    for (earlier runs included; failed generations refunded), and what is left to submit.

    ``allows`` is asked before each submit is claimed: with ``max_cost`` set, a submit that
    could take the spend over it is not sent (the rest stays pending).
    """

    def __init__(self, table: PriceTable, max_cost: float | None = None):
        self.table = table
        self.max_cost = max_cost
        self.spent_usd = 0.0  # billed, net of refunds
        self.unpriced_billed = 0  # billed jobs whose price is unknown
        self.at_start = 0.0  # spent_usd when this run began
        self.to_submit = Estimate()  # the jobs this run may still submit
        # job → cost, only while its task is in flight and may still be refunded: dropped when
        # the job leaves the run's hands (``done``), so nothing here grows with the batch
        self.held: dict[str, float] = {}
        self.reserved: dict[str, float] = {}  # job → cost, between claim and its task id
        self.stopped = False  # a submit did not fit under max_cost: no more are sent

    def cost(self, body: Mapping[str, Any]) -> float | None:
        price = price_of(self.table, body["model"], body["resolution"])
        return None if price is None else price * body["duration"]

    @classmethod
    def from_journal(cls, journal: Any, table: PriceTable, max_cost: float | None = None) -> Spend:
        spend = cls(table, max_cost)
        for job_id, state, model, resolution, duration in journal.billed_variants():
            cost = spend.cost({"model": model, "resolution": resolution, "duration": duration})
            if cost is None:
                spend.unpriced_billed += 1
                continue
            spend.spent_usd += cost
            if state in IN_FLIGHT:
                spend.held[job_id] = cost
        spend.at_start = spend.spent_usd
        spend.to_submit = estimate(journal.pending_groups(), table)
        return spend

    @property
    def projected_usd(self) -> float:
        return self.spent_usd + sum(self.reserved.values()) + self.to_submit.cost_usd

    def allows(self, job_id: str, body: Mapping[str, Any]) -> bool:
        """May this submit go? (Reserves its cost until ``settled``.) A job of unknown price is
        refused under a max_cost: nothing can show it fits."""
        cost = self.cost(body)
        if self.max_cost is not None:
            committed = self.spent_usd + sum(self.reserved.values())
            if self.stopped or cost is None or committed + cost > self.max_cost + 1e-9:
                self.stopped = True
                return False
        self.reserved[job_id] = cost or 0.0
        return True

    def billed(self, job_id: str, body: Mapping[str, Any]) -> None:
        """The job got a task: the API bills it."""
        self.reserved.pop(job_id, None)
        cost = self.cost(body)
        if self.to_submit.jobs:
            self.to_submit.jobs -= 1
            if cost is None:
                self.to_submit.unpriced = max(0, self.to_submit.unpriced - 1)
            else:
                self.to_submit.cost_usd = max(0.0, self.to_submit.cost_usd - cost)
        if cost is None:
            self.unpriced_billed += 1
            return
        self.spent_usd += cost
        self.held[job_id] = cost

    def settled(self, job_id: str) -> None:
        """The submit of a job is over; a reservation it did not turn into a task lapses."""
        self.reserved.pop(job_id, None)

    def refunded(self, job_id: str) -> None:
        """The API said the job's generation failed: its cost is given back."""
        self.spent_usd -= self.held.pop(job_id, 0.0)

    def done(self, job_id: str) -> None:
        """The job is out of the run's hands (completed, failed, left for a later run): no
        refund of it can come this run, so its cost is no longer held (a later run holds it
        again from the journal while its task is in flight): ``held`` holds only jobs in flight.
        """
        self.held.pop(job_id, None)

    def line(self) -> str:
        """For the progress display: "spent $1.44, projected $6.24"."""
        spent = usd(self.spent_usd)
        if self.unpriced_billed:
            spent += f" + {self.unpriced_billed} of unknown price"
        text = f"spent {spent}, projected {usd(self.projected_usd)}"
        if self.max_cost is not None:
            text += f" (max {usd(self.max_cost)})"
        return text

    def over_budget(self) -> BudgetReached:
        return BudgetReached(
            f"budget.max_cost {usd(self.max_cost)}: the next submit would take the spend "
            f"(now {usd(self.spent_usd + sum(self.reserved.values()))}) over it; submitting "
            "stopped, the rest stays pending"
        )


def estimate(groups: Iterable[tuple[str, str, int, int]], table: PriceTable) -> Estimate:
    """The cost of (model, resolution, duration, jobs) groups (journal.pending_groups)."""
    out = Estimate()
    for model, resolution, duration, jobs in groups:
        price = price_of(table, model, resolution)
        out.add(model, None if price is None else price * duration, jobs)
    return out


def _fits(variants: Iterable[tuple[str, str, int]], table: PriceTable, budget: float) -> int:
    """How many of the jobs, in submit order, the budget pays for (stops at the first that
    does not fit; a job of unknown price does not fit: nothing shows it does)."""
    n, total = 0, 0.0
    for model, resolution, duration in variants:
        price = price_of(table, model, resolution)
        if price is None or total + price * duration > budget + 1e-9:
            break
        total += price * duration
        n += 1
    return n


@dataclass
class Preflight:
    """What the checks before the first submit found."""

    balance: Balance | None = None  # None: not read (no endpoint, an error)
    account: bool = False  # read from /v1/user/balance (the key's endpoint is missing)
    estimate: Estimate | None = None


async def preflight(
    client: BalanceSource,
    journal: Any,
    table: PriceTable,
    *,
    allow_partial: bool,
    say: Callable[[str], None],
) -> Preflight:
    """Before the first submit: refuse a model the key may not use, and a balance that cannot
    pay for the jobs still to submit (InsufficientBalance, exit 4), or with ``allow_partial``
    limit the run to what it pays for. An endpoint the API does not have (404), or that fails,
    skips its check with a note; a refused key (401) ends the run as any call would."""
    todo = estimate(journal.pending_groups(), table)
    found = Preflight(estimate=todo)
    if not todo.jobs:
        return found
    await _check_models(client, todo.models, say)
    balance, account = await _read_balance(client, say)
    found.balance, found.account = balance, account
    if balance is None:
        return found
    if balance.unlimited or balance.remain_usd is None:
        say("balance: unlimited quota; not checked against the estimate")
        return found
    left = balance.remain_usd
    if todo.unpriced:
        say(
            f"balance check: {todo.unpriced:,} jobs have no price in the catalog "
            f"({', '.join(sorted(todo.unpriced_models))}); they are not counted"
        )
    where = "account" if account else "key"
    if todo.cost_usd <= left + 1e-9:
        say(
            f"balance ({where}): {usd(left)} left; the {todo.jobs:,} jobs to submit are "
            f"estimated at {todo.text()}"
        )
        return found
    if allow_partial:
        n = _fits(journal.pending_variants(), table, left)
        if n:
            journal.limit_slice(n)
            say(
                f"--allow-partial: the balance ({usd(left)}) pays for {n:,} of the "
                f"{todo.jobs:,} jobs to submit (estimated {todo.text()}); the rest stay "
                "pending for a later run"
            )
            return found
    raise InsufficientBalance(
        f"the balance ({where}) is {usd(left)}, the {todo.jobs:,} jobs to submit are "
        f"estimated at {todo.text()} (catalog prices): nothing was submitted; top up, or run "
        "what the balance pays for with --allow-partial"
    )


async def _check_models(
    client: BalanceSource, needed: set[str], say: Callable[[str], None]
) -> None:
    try:
        ids = await client.models()
    except AuthError:
        raise
    except (ApiError, TransportError) as exc:
        if getattr(exc, "status", None) == 404:
            say("model list: the API has no GET /v1/models (404); models not checked")
        else:
            say(f"model list not checked: {exc}")
        return
    missing = sorted(needed - set(ids))
    if missing:
        raise ModelNotAvailable(
            f"model {', '.join(missing)}: not among the models this key may use "
            f"(GET /v1/models lists {', '.join(ids[:12])}{' …' if len(ids) > 12 else ''}); "
            "nothing was submitted (--no-preflight skips this check)"
        )


async def _read_balance(
    client: BalanceSource, say: Callable[[str], None]
) -> tuple[Balance | None, bool]:
    """The key's balance, else the account's; (None, _) with a note when neither answers."""
    for account in (False, True):
        try:
            return await client.balance(account=account), account
        except AuthError:
            raise
        except (ApiError, TransportError) as exc:
            if getattr(exc, "status", None) == 404:
                continue
            say(f"balance not checked: {exc}")
            return None, False
        except OmniBatchError as exc:  # pragma: no cover - any other refusal: not checked
            say(f"balance not checked: {exc}")
            return None, False
    say("balance: the API has no GET /v1/balance or /v1/user/balance (404); not checked")
    return None, False


async def balance_after(
    client: BalanceSource, before: Preflight, spent_here: float, say: Callable[[str], None]
) -> Balance | None:
    """At the end: the balance again, against the one before and the catalog's estimate."""
    if before.balance is None or before.balance.remain_usd is None:
        return None
    try:
        after = await client.balance(account=before.account)
    except (OmniBatchError, Exception) as exc:  # the run is over: a note, not a failure
        say(f"balance after the run not read: {exc}")
        return None
    if after.remain_usd is None:
        return after
    billed = before.balance.remain_usd - after.remain_usd
    diff = round(billed - spent_here, 6)
    say(
        f"balance: {usd(before.balance.remain_usd)} before, {usd(after.remain_usd)} after: "
        f"{usd(billed)} billed by the API (refunds so far included); {usd(spent_here)} by the "
        f"catalog's prices (difference {'+' if diff >= 0 else '-'}{usd(abs(diff))})"
    )
    return after
