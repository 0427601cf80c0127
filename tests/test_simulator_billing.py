"""The simulator bills as the contract says (issue #15): credits per second of video at the
catalog's price x credits_per_usd, refunds for failed generations, 402 when the balance cannot
pay a submit, and the balance and model-list endpoints (or their absence: 404)."""

from __future__ import annotations

import pytest

# gemini_omni: $0.12/s in the shipped catalog; 6 s by default = $0.72 = 144 credits
TASK_CREDITS = 0.12 * 200 * 6


async def _get(api, path: str, key: str | None = None):
    async with api.http.get(api.sim.base_url + path, headers=api._auth(key)) as response:
        return await api._reply(response)


def test_a_submit_is_charged_and_the_balance_endpoints_say_so(sim_run):
    async def scenario(api):
        before = (await _get(api, "/v1/balance")).body["data"]
        assert before["remain_credits"] == pytest.approx(1000)
        assert before["used_credits"] == 0
        assert before["credits_per_usd"] == 200
        assert before["unlimited_quota"] is False
        assert (await api.submit()).status == 200
        mine = (await _get(api, "/v1/balance")).body["data"]
        account = (await _get(api, "/v1/user/balance")).body["data"]
        for data in (mine, account):
            assert data["used_credits"] == pytest.approx(TASK_CREDITS)
            assert data["remain_credits"] == pytest.approx(1000 - TASK_CREDITS)
            assert data["used_balance"] == pytest.approx(0.72)
            assert data["remain_balance"] == pytest.approx((1000 - TASK_CREDITS) / 200)

    sim_run(scenario, balance_credits=1000)


def test_a_failed_generation_is_refunded(sim_run):
    async def scenario(api):
        task_id = (await api.submit()).body["id"]
        charged = (await _get(api, "/v1/balance")).body["data"]["used_credits"]
        assert charged == pytest.approx(TASK_CREDITS)
        assert (await api.wait(task_id)).body["status"] == "failed"
        after = (await _get(api, "/v1/balance")).body["data"]
        assert after["used_credits"] == 0
        assert after["remain_credits"] == pytest.approx(1000)
        stats = api.sim.stats()
        assert stats["credits_refunded"] == pytest.approx(TASK_CREDITS)

    sim_run(scenario, balance_credits=1000, p_fail=1.0)


def test_a_submit_the_balance_cannot_pay_answers_402_and_creates_nothing(sim_run):
    async def scenario(api):
        assert (await api.submit()).status == 200  # 144 of 200 credits
        refused = await api.submit()
        assert refused.status == 402
        assert refused.body["error"]["type"] == "insufficient_quota"
        assert "144 credits" in refused.body["error"]["message"]
        stats = api.sim.stats()
        assert stats["submits"] == 1
        assert stats["credits_left"] == pytest.approx(200 - TASK_CREDITS)

    sim_run(scenario, balance_credits=200)


def test_an_unlimited_balance_says_so(sim_run):
    async def scenario(api):
        data = (await _get(api, "/v1/user/balance")).body["data"]
        assert data["unlimited_quota"] is True

    sim_run(scenario)


def test_the_model_list_leaves_out_blocked_models(sim_run):
    async def scenario(api):
        reply = await _get(api, "/v1/models?type=video")
        ids = [m["id"] for m in reply.body["data"]]
        assert "gemini_omni" in ids
        assert "veo3.1-fast" not in ids

    sim_run(scenario, blocked_models=("veo3.1-fast",))


def test_an_api_without_the_endpoints_answers_404(sim_run):
    async def scenario(api):
        for path in ("/v1/balance", "/v1/user/balance", "/v1/models"):
            reply = await _get(api, path)
            assert reply.status == 404, path

    sim_run(scenario, balance_endpoint=False, models_endpoint=False)


def test_the_account_endpoints_need_the_key(sim_run):
    async def scenario(api):
        for path in ("/v1/balance", "/v1/models"):
            assert (await _get(api, path, key="sk-wrong")).status == 401

    sim_run(scenario)
