"""`retried`: the first attempt outside tenacity, every later decision by tenacity's rules."""

from __future__ import annotations

import asyncio

import pytest

from omni_batch.errors import (
    Ambiguous,
    BadResponse,
    GatewayError,
    NotAccepted,
    NotSent,
    RequestRejected,
    ServerError,
)
from omni_batch.running.options import Policy, retried

QUICK = Policy(retries=3, retry_initial=0.001, retry_max=0.002)


def run_with(rules, outcomes: list[BaseException | str]) -> tuple[str | BaseException, int]:
    """Feed ``outcomes`` (an exception to raise, or a value to return) to one retried call."""
    calls = 0

    async def call() -> str:
        nonlocal calls
        outcome = outcomes[calls]
        calls += 1
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def main() -> str | BaseException:
        try:
            return await retried(rules, call)
        except Exception as exc:
            return exc

    return asyncio.run(main()), calls


def test_a_first_success_is_returned_after_one_call():
    assert run_with(QUICK.poll_retrying, ["done"]) == ("done", 1)


def test_retryable_failures_are_tried_again_until_one_succeeds():
    outcomes = [NotSent("refused"), NotAccepted("503 rate_limit_unavailable"), "done"]
    assert run_with(QUICK.submit_retrying, outcomes) == ("done", 3)


def test_after_retries_plus_one_attempts_the_last_error_itself_is_raised():
    errors = [Ambiguous(f"lost {n}") for n in range(10)]
    result, calls = run_with(QUICK.poll_retrying, errors)
    assert calls == QUICK.retries + 1 and result is errors[QUICK.retries]


@pytest.mark.parametrize(
    "error",
    [
        RequestRejected("422", status=422),
        GatewayError("502", status=502),
        GatewayError("524", status=524),
        ServerError("500", status=500),
        ServerError("503", status=503),
        Ambiguous("timeout"),
        BadResponse("no task id", status=200),
    ],
)
def test_a_submit_failure_that_may_have_landed_or_is_final_is_never_sent_again(error):
    result, calls = run_with(QUICK.submit_retrying, [error, "a second task"])
    assert (result, calls) == (error, 1)


def test_a_failure_on_a_retry_that_is_not_retryable_ends_at_once():
    final = RequestRejected("404", status=404)
    result, calls = run_with(QUICK.poll_retrying, [ServerError("503"), final, "never"])
    assert (result, calls) == (final, 2)
