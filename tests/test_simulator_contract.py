"""The simulator speaks the ToAPIs contract: submit, status, errors, auth, client_business_id,
and the stats endpoint, each checked over real loopback HTTP."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

CAT = {"model": "gemini_omni", "prompt": "a cat surfing"}


def _error_ok(reply, status: int, kind: str) -> None:
    assert reply.status == status
    assert reply.body["error"]["type"] == kind
    assert reply.body["error"]["message"]
    assert reply.body["request_id"] == reply.headers["X-Request-Id"]


def test_submit_answers_the_object_shape_by_default(sim_run):
    async def scenario(api):
        reply = await api.submit()
        assert reply.status == 200
        assert reply.headers["X-Request-Id"]
        body = reply.body
        assert body["object"] == "generation.task"
        assert body["model"] == "gemini_omni"
        assert (body["status"], body["progress"]) == ("queued", 0)
        assert isinstance(body["created_at"], int)
        assert body["id"].startswith("video_")

    sim_run(scenario)


def test_submit_can_answer_the_legacy_shape(sim_run):
    async def scenario(api):
        reply = await api.submit()
        assert reply.status == 200
        assert reply.body["code"] == 200
        [entry] = reply.body["data"]
        assert entry["status"] == "submitted"
        assert (await api.poll(entry["task_id"])).status == 200

    sim_run(scenario, submit_shape="legacy")


def test_queued_word_can_be_submitted(sim_run):
    async def scenario(api):
        reply = await api.submit()
        assert reply.body["status"] == "submitted"
        assert (await api.poll(reply.body["id"])).body["status"] == "submitted"

    sim_run(scenario, queued_word="submitted", queue_min=5.0, queue_max=5.0)


def test_a_task_goes_queued_then_in_progress_with_rising_progress_then_completed(sim_run):
    async def scenario(api):
        task_id = (await api.submit()).body["id"]
        seen = []
        while True:
            body = (await api.poll(task_id)).body
            seen.append((body["status"], body["progress"]))
            if body["status"] == "completed":
                return body, seen
            await asyncio.sleep(0.02)

    body, seen = sim_run(scenario, queue_min=0.1, queue_max=0.1, gen_min=0.3, gen_max=0.3)
    statuses = [s for s, _ in seen]
    assert statuses[0] == "queued"
    assert "in_progress" in statuses
    order = {"queued": 0, "in_progress": 1, "completed": 2}
    assert [order[s] for s in statuses] == sorted(order[s] for s in statuses)
    progress = [p for _, p in seen]
    assert progress == sorted(progress)
    assert all(0 < p < 100 for s, p in seen if s == "in_progress")
    assert body["progress"] == 100
    assert body["expires_at"] - body["completed_at"] in (86_399, 86_400)
    assert body["completed_at"] >= body["created_at"]
    assert body["result"]["type"] == "video"
    assert body["result"]["data"][0]["format"] == "mp4"


@pytest.mark.parametrize("shape", ["result", "url", "video_url"])
def test_each_result_shape_carries_the_video_url(sim_run, shape):
    async def scenario(api):
        body = (await api.wait((await api.submit()).body["id"])).body
        if shape == "result":
            url = body["result"]["data"][0]["url"]
        else:
            assert "result" not in body
            url = body[shape]
        assert url.startswith(api.sim.cdn_url + "/videos/")
        assert (await api.fetch(url))[0] == 200

    sim_run(scenario, result_shape=shape)


def test_a_failed_generation_names_the_content_policy(sim_run):
    async def scenario(api):
        body = (await api.wait((await api.submit()).body["id"])).body
        assert body["status"] == "failed"
        assert body["error"]["code"] == "generation_failed"
        assert "content policy" in body["error"]["message"]
        assert "result" not in body and "url" not in body
        assert api.sim.stats()["tasks_failed"] == 1

    sim_run(scenario, p_fail=1.0)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"prompt": "x"}, "model: required"),
        ({"model": "sora", "prompt": "x"}, "unknown model"),
        ({"model": "gemini_omni"}, "prompt"),
        ({**CAT, "duration": "6"}, "duration: must be an integer"),
        ({**CAT, "duration": 8}, "duration"),
        ({**CAT, "aspect_ratio": "1:1"}, "aspect_ratio"),
        ({**CAT, "model": "gemini_omni_flash", "resolution": "1080p", "aspect_ratio": "9:16"}, ""),
        ({**CAT, "client_business_id": 12}, "client_business_id"),
        (["not", "an", "object"], "JSON object"),
    ],
)
def test_invalid_bodies_get_400_with_the_catalogs_reason(sim_run, body, words):
    async def scenario(api):
        reply = await api.submit(body)
        _error_ok(reply, 400, "invalid_request_error")
        assert reply.body["error"]["code"] == 400
        assert words in reply.body["error"]["message"]
        assert api.sim.stats()["submits"] == 0

    sim_run(scenario)


def test_a_body_that_is_not_json_gets_400(sim_run):
    async def scenario(api):
        async with api.http.post(
            api.sim.base_url + "/v1/videos/generations",
            data=b"{nope",
            headers={"Authorization": f"Bearer {api.sim.key}"},
        ) as response:
            assert response.status == 400
            assert "not valid JSON" in (await response.json())["error"]["message"]

    sim_run(scenario)


def test_omitted_fields_take_the_models_defaults(sim_run):
    async def scenario(api):
        for body in (CAT, {"model": "viduq3-pro", "prompt": "x", "aspect_ratio": "1:1"}):
            assert (await api.submit(body)).status == 200

    sim_run(scenario)


def test_error_codes_can_be_strings(sim_run):
    async def scenario(api):
        reply = await api.submit({"prompt": "x"})
        assert reply.body["error"]["code"] == "invalid_request"
        assert (await api.poll("nope", key="sk-wrong")).body["error"]["code"] == "invalid_api_key"

    sim_run(scenario, error_code="string")


def test_missing_or_wrong_keys_get_401_on_every_endpoint(sim_run):
    async def scenario(api):
        task_id = (await api.submit()).body["id"]
        _error_ok(await api.submit(key="sk-wrong"), 401, "authentication_error")
        _error_ok(await api.poll(task_id, key="sk-wrong"), 401, "authentication_error")
        async with api.http.get(f"{api.sim.base_url}/v1/videos/generations/{task_id}") as r:
            assert r.status == 401
            assert "missing API key" in (await r.json())["error"]["message"]
        assert api.sim.stats()["status_401"] == 3

    sim_run(scenario)


def test_a_task_is_invisible_to_another_key(sim_run):
    async def scenario(api):
        mine = (await api.submit(key="sk-a", client_business_id="job-1")).body["id"]
        assert (await api.poll(mine, key="sk-a")).status == 200
        _error_ok(await api.poll(mine, key="sk-b"), 404, "invalid_request_error")
        assert (await api.poll("job-1", key="sk-b")).status == 404
        # The same client_business_id is free for another key.
        assert (await api.submit(key="sk-b", client_business_id="job-1")).status == 200

    sim_run(scenario, keys=("sk-a", "sk-b"))


def test_unknown_tasks_and_paths_get_404_with_a_request_id(sim_run):
    async def scenario(api):
        _error_ok(await api.poll("video_nope"), 404, "invalid_request_error")
        async with api.http.get(api.sim.base_url + "/v2/other") as response:
            assert response.status == 404
            assert (await response.json())["request_id"] == response.headers["X-Request-Id"]
        assert api.sim.stats()["polls_unknown"] == 1

    sim_run(scenario)


def test_client_business_id_stands_in_for_the_task_id(sim_run):
    async def scenario(api):
        task_id = (await api.submit(client_business_id="job-7")).body["id"]
        by_cbid = await api.poll("job-7")
        assert by_cbid.status == 200
        assert by_cbid.body["id"] == task_id
        assert by_cbid.body["client_business_id"] == "job-7"

    sim_run(scenario)


def test_reusing_a_client_business_id_is_a_409_naming_the_first_task(sim_run):
    async def scenario(api):
        first = (await api.submit(client_business_id="job-7")).body["id"]
        again = await api.submit(client_business_id="job-7", prompt="something else")
        _error_ok(again, 409, "invalid_request_error")
        assert again.body["error"]["task_id"] == first
        stats = api.sim.stats()
        assert (stats["submits"], stats["duplicate_client_business_ids"]) == (1, 1)

    sim_run(scenario)


def test_reusing_a_client_business_id_can_return_the_first_task(sim_run):
    async def scenario(api):
        first = (await api.submit(client_business_id="job-7")).body["id"]
        again = await api.submit(client_business_id="job-7")
        assert (again.status, again.body["id"]) == (200, first)
        assert api.sim.stats()["submits"] == 1

    sim_run(scenario, duplicate_cbid="existing")


def test_stats_count_submits_duplicates_and_polls(sim_run):
    async def scenario(api):
        a = (await api.submit()).body["id"]
        await api.submit()  # the same body again: a duplicate
        await api.submit(prompt="another")
        await api.submit({"prompt": "no model"})
        await api.wait(a)
        await api.poll(a)
        await api.poll(a)
        async with (
            aiohttp.ClientSession() as bare,  # no key needed for stats
            bare.get(api.sim.base_url + "/_sim/stats") as response,
        ):
            over_http = await response.json()
        return over_http, api.sim.stats()

    over_http, direct = sim_run(scenario)
    for stats in (over_http, direct):
        assert stats["submit_requests"] == 4
        assert stats["submits"] == 3
        assert stats["duplicate_bodies"] == 1
        assert stats["max_submits_per_body"] == 2
        assert stats["status_400"] == 1
        assert stats["polls_after_terminal"] == 2
        assert stats["polls_per_task_max"] == stats["polls"] >= 3
        assert stats["requests"] == 4 + stats["polls"]
        assert stats["peak_active"] == 3
        assert stats["statuses"]["200"] == 3 + stats["polls"]
    assert over_http["requests"] == direct["requests"]  # the stats call itself is not counted
