"""Each fault knob of the simulator, forced on, and the limits it enforces: rate, active cap,
quota, 5xx, 429 storms, drops, ambiguous submits, slowness, link expiry and the CDN host."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest


def _url(body: dict) -> str:
    return body["result"]["data"][0]["url"]


def test_the_token_bucket_answers_429_with_retry_after_for_submits_and_polls(sim_run):
    async def scenario(api):
        task_id = (await api.submit()).body["id"]
        assert (await api.poll(task_id)).status == 200
        limited = await api.poll(task_id)  # the third call in a burst of 2
        assert limited.status == 429
        assert limited.body["error"]["type"] == "rate_limit_exceeded"
        assert limited.headers["Retry-After"] == "1"
        assert (await api.submit()).status == 429
        stats = api.sim.stats()
        assert (stats["status_429"], stats["limited_rate"], stats["submits"]) == (2, 2, 1)
        await asyncio.sleep(0.55)  # rate 2/s: one token back after 0.5 s
        assert (await api.poll(task_id)).status == 200

    sim_run(scenario, rate=2.0, burst=2)


def test_the_rate_limit_is_per_key(sim_run):
    async def scenario(api):
        assert (await api.submit(key="sk-a")).status == 200
        assert (await api.submit(key="sk-a")).status == 429
        assert (await api.submit(key="sk-b")).status == 200

    sim_run(scenario, keys=("sk-a", "sk-b"), rate=1.0, burst=1)


def test_the_active_task_cap_answers_429_until_a_task_finishes(sim_run):
    async def scenario(api):
        for _ in range(2):
            assert (await api.submit()).status == 200
        capped = await api.submit()
        assert capped.status == 429
        assert capped.body["error"]["type"] == "rate_limit_exceeded"
        assert capped.headers["Retry-After"] == "1"
        await asyncio.sleep(0.35)
        assert (await api.submit()).status == 200
        stats = api.sim.stats()
        assert (stats["limited_active"], stats["peak_active"]) == (1, 2)

    sim_run(scenario, max_active=2, queue_min=0, queue_max=0, gen_min=0.3, gen_max=0.3)


def test_submits_past_quota_after_get_402_while_polls_still_work(sim_run):
    async def scenario(api):
        ids = [(await api.submit(prompt=f"p{i}")).body["id"] for i in range(2)]
        refused = await api.submit(prompt="p3")
        assert refused.status == 402
        assert refused.body["error"]["type"] == "insufficient_quota"
        assert (await api.wait(ids[1])).body["status"] == "completed"
        assert api.sim.stats()["status_402"] == 1

    sim_run(scenario, quota_after=2)


def test_injected_5xx_carry_a_request_id(sim_run):
    async def scenario(api):
        for _ in range(6):
            reply = await api.submit()
            assert reply.status in (500, 502, 503)
            assert reply.body["error"]["type"] == "internal_error"
            assert reply.body["request_id"] == reply.headers["X-Request-Id"]
        stats = api.sim.stats()
        assert (stats["status_5xx"], stats["submits"]) == (6, 0)

    sim_run(scenario, p_5xx=1.0)


def test_an_injected_429_opens_a_storm_with_a_matching_retry_after(sim_run):
    async def scenario(api):
        first = await api.submit()
        assert (first.status, first.headers["Retry-After"]) == (429, "3")
        during = await api.poll("anything")
        assert during.status == 429
        assert int(during.headers["Retry-After"]) in (2, 3)
        assert api.sim.stats()["limited_injected"] == 2

    sim_run(scenario, p_429=1.0, storm_s=3.0)


def test_a_dropped_connection_gets_no_answer_and_creates_nothing(sim_run):
    async def scenario(api):
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await api.submit()
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await api.poll("video_x")
        stats = api.sim.stats()
        # aiohttp resends an idempotent GET once after a disconnect, so the poll counts twice.
        assert (stats["dropped"], stats["submits"]) == (3, 0)

    sim_run(scenario, p_drop=1.0)


def test_an_ambiguous_submit_creates_the_task_then_drops_the_connection(sim_run):
    async def scenario(api):
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await api.submit(client_business_id="job-1")
        found = await api.poll("job-1")  # the only way to learn the submit landed
        assert found.status == 200
        stats = api.sim.stats()
        assert (stats["submits"], stats["ambiguous_submits"], stats["dropped"]) == (1, 1, 1)

    sim_run(scenario, p_ambiguous=1.0)


def test_slow_responses_and_latency_delay_the_answer(sim_run):
    async def scenario(api):
        started = time.monotonic()
        assert (await api.submit()).status == 200
        return time.monotonic() - started

    assert sim_run(scenario, p_slow=1.0, slow_delay=0.3) >= 0.3
    assert sim_run(scenario, latency=0.2) >= 0.2


def test_the_video_comes_from_a_separate_host_that_counts_auth_headers(sim_run):
    async def scenario(api):
        body = (await api.wait((await api.submit()).body["id"])).body
        url = _url(body)
        assert not url.startswith(api.sim.base_url)
        status, headers, data = await api.fetch(url)
        assert status == 200
        assert headers["Content-Type"] == "video/mp4"
        assert int(headers["Content-Length"]) == len(data) > 1000
        assert (await api.fetch(url, {"Authorization": "Bearer leaked"}))[0] == 200
        stats = api.sim.stats()
        assert (stats["downloads"], stats["downloads_with_auth"]) == (2, 1)
        assert stats["requests"] == 1 + stats["polls"]  # downloads are not API requests

    sim_run(scenario)


def test_the_cdn_refuses_unfinished_tasks_and_tampered_links(sim_run):
    async def scenario(api):
        task_id = (await api.submit()).body["id"]
        pending = f"{api.sim.cdn_url}/videos/{task_id}.mp4?exp=99999999999999"
        assert (await api.fetch(pending))[0] == 404
        url = _url((await api.wait(task_id)).body)
        assert (await api.fetch(url.replace("exp=", "exp=9")))[0] == 403
        assert (await api.fetch(url.split("?")[0]))[0] == 403

    sim_run(scenario)


def test_a_link_expires_and_a_fresh_poll_hands_out_a_new_one(sim_run):
    async def scenario(api):
        task_id = (await api.submit()).body["id"]
        body = (await api.wait(task_id)).body
        assert body["expires_at"] <= time.time() + 0.5
        old = _url(body)
        await asyncio.sleep(0.5)
        assert (await api.fetch(old))[0] == 403
        new = _url((await api.poll(task_id)).body)
        assert new != old
        assert (await api.fetch(new))[0] == 200
        stats = api.sim.stats()
        assert (stats["downloads_expired"], stats["links_refreshed"]) == (1, 1)

    sim_run(scenario, link_ttl=0.4)


def test_without_refresh_an_expired_link_stays_dead(sim_run):
    async def scenario(api):
        task_id = (await api.submit()).body["id"]
        old = _url((await api.wait(task_id)).body)
        await asyncio.sleep(0.4)
        again = _url((await api.poll(task_id)).body)
        assert again == old
        assert (await api.fetch(again))[0] == 403

    sim_run(scenario, link_ttl=0.3, refresh_links=False)


def test_a_slow_download_trickles_the_whole_file(sim_run):
    async def scenario(api):
        url = _url((await api.wait((await api.submit()).body["id"])).body)
        await api.fetch(url)  # render the clip first so only the transfer is timed
        started = time.monotonic()
        status, headers, data = await api.fetch(url)
        elapsed = time.monotonic() - started
        assert status == 200 and len(data) == int(headers["Content-Length"])
        return elapsed, len(data)

    elapsed, size = sim_run(scenario, download_rate=100_000.0)
    assert elapsed >= 0.8 * size / 100_000


def test_a_truncated_download_breaks_off_before_its_content_length(sim_run):
    async def scenario(api):
        url = _url((await api.wait((await api.submit()).body["id"])).body)
        with pytest.raises(aiohttp.ClientPayloadError):
            await api.fetch(url)
        assert api.sim.stats()["downloads_truncated"] == 1

    sim_run(scenario, p_truncate=1.0)


def _observe(api_run, seed: int) -> list:
    """One fixed request sequence; everything the client could see of it."""

    async def scenario(api):
        seen = []
        for i in range(12):
            reply = await api.submit(prompt=f"prompt {i}", client_business_id=f"job-{i}")
            body = {k: v for k, v in reply.body.items() if k != "created_at"}
            seen.append(("submit", reply.status, body if reply.status == 200 else None))
        await asyncio.sleep(0.3)  # every task is finished, whatever its drawn timings
        for i in range(12):
            reply = await api.poll(f"job-{i}")
            if reply.status == 200:
                body = dict(reply.body)
                for moving in ("created_at", "completed_at", "expires_at"):
                    body.pop(moving, None)
                for shape in ("url", "video_url"):
                    if shape in body:
                        body[shape] = body[shape].split("/videos/")[1].split("?")[0]
                if "result" in body:
                    body["result"] = _url(body).split("/videos/")[1].split("?")[0]
                seen.append(("poll", reply.status, body))
            else:
                seen.append(("poll", reply.status, reply.body["error"]["code"]))
        return seen

    return api_run(
        scenario,
        seed=seed,
        p_fail=0.5,
        p_5xx=0.3,
        submit_shape="mixed",
        result_shape="mixed",
        queued_word="mixed",
        error_code="mixed",
    )


def test_the_same_seed_and_requests_give_the_same_outcomes(sim_run):
    first, second = _observe(sim_run, seed=7), _observe(sim_run, seed=7)
    assert first == second
    assert first != _observe(sim_run, seed=8)
    statuses = {status for _, status, _ in first}
    assert 200 in statuses and statuses & {500, 502, 503}


def test_mixed_shapes_produce_every_form(sim_run):
    async def scenario(api):
        shapes, results, words, ids = set(), set(), set(), []
        for i in range(24):
            body = (await api.submit(prompt=f"p{i}")).body
            shapes.add("legacy" if "data" in body else "object")
            ids.append(body.get("id") or body["data"][0]["task_id"])
            words.add((await api.poll(ids[-1])).body["status"])
        await asyncio.sleep(0.55)
        for task_id in ids:
            final = (await api.poll(task_id)).body
            results.update(k for k in ("result", "url", "video_url") if k in final)
        return shapes, results, words

    shapes, results, words = sim_run(
        scenario,
        seed=3,
        queue_min=0.5,
        queue_max=0.5,
        gen_min=0.0,
        gen_max=0.0,
        submit_shape="mixed",
        result_shape="mixed",
        queued_word="mixed",
    )
    assert shapes == {"object", "legacy"}
    assert results == {"result", "url", "video_url"}
    assert words == {"queued", "submitted"}


def test_blocked_models_answer_403_and_rejections_422(sim_run):
    async def scenario(api):
        blocked = await api.submit()
        assert blocked.status == 403 and blocked.body["error"]["type"] == "permission_error"
        assert api.sim.stats()["submits"] == 0

    sim_run(scenario, blocked_models=("gemini_omni",))

    async def rejected(api):
        reply = await api.submit()
        assert reply.status == 422 and "content policy" in reply.body["error"]["message"]
        assert reply.body["request_id"]

    sim_run(rejected, p_reject=1.0)
