"""Several accounts (issue #14 item 8), end to end: the real CLI against the real simulator.

The simulator counts limits per account and shows each account only its own tasks (another
account's key gets a 404), so a task polled with the wrong key shows up as a failed job.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import urllib.parse
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from click.testing import CliRunner

from omni_batch.batch import RunOptions, _accounts
from omni_batch.cli.main import main
from omni_batch.crash import ENV as CRASH_ENV
from omni_batch.errors import InputError, RequestRejected
from omni_batch.running.accounts import Identity, match, parse_keys_env, parse_keys_file
from omni_batch.running.budgets import Rates
from omni_batch.running.options import FAST
from omni_batch.running.redact import Redactor, base64_cores
from tests import spawn
from tests.conftest import cli, report, shots_manifest, sim

KA, KB, KC = "sk-alpha-0123456789abcdef", "sk-bravo-0123456789abcdef", "sk-carol-0123456789abcd"
ACCOUNTS = f"a={KA},b={KB}"
SEED = 11  # the simulator seed these tests were written against


def owner(server, task_id: str) -> str:
    """The account (simulator side) whose key created the task."""
    return server.state.config.account_of()[server.state.tasks[task_id].key]


def no_key_anywhere(out: Path, text: str, *keys: str) -> None:
    for path in out.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for key in keys:
                assert key.encode() not in data, path
    for key in keys:
        assert key not in text


def test_jobs_spread_over_two_accounts_each_within_its_rate(tmp_path):
    manifest = shots_manifest(tmp_path, 24)
    out = tmp_path / "out"
    with sim(seed=SEED, accounts=ACCOUNTS, submit_rate=5.0, query_rate=100.0) as server:
        rates = ("--submit-rate", "4", "--query-rate", "90")
        result = cli(server, manifest, out, "--no-verify", *rates, keys=ACCOUNTS, rate=None)
        stats = server.stats()
        owners = {t: owner(server, t) for t in server.state.tasks}
    assert result.exit_code == 0, result.output
    rows = report(out)
    assert set(rows.status) == {"completed"}
    per = rows.account.value_counts().to_dict()
    assert set(per) == {"a", "b"} and min(per.values()) >= 8, per  # both used, near even
    # each job's report account is the account whose key created its task
    assert all(owners[t] == a for t, a in zip(rows.task_id, rows.account, strict=True))
    for name in ("a", "b"):
        submit = stats["accounts"][name]["async_submit"]
        # paced to the account's own rate (a 429 at most: arrival jitter on a busy machine)
        assert sum(submit["limited"].values()) <= 1, submit
        assert submit["max_per_1s"] <= 5, submit
    assert stats["polls_unknown"] == 0
    assert "accounts: a " in result.output and " · b " in result.output
    no_key_anywhere(out, result.output, KA, KB)


def test_two_keys_of_one_account_share_its_budget(tmp_path):
    manifest = shots_manifest(tmp_path, 12)
    out = tmp_path / "out"
    with sim(seed=SEED, accounts=f"a={KA},a={KB}", submit_rate=5.0, query_rate=100.0) as server:
        result = cli(
            server, manifest, out, "--no-verify", "--submit-rate", "4", "--query-rate", "90",
            keys=f"a={KA},a={KB}", rate=None,
        )  # fmt: skip
        stats = server.stats()
        created = {k: server.state.keys[k].created for k in (KA, KB)}
    assert result.exit_code == 0, result.output
    assert set(report(out).account) == {"a"}
    assert abs(created[KA] - created[KB]) <= 2, created  # the keys of one account in turn
    submit = stats["accounts"]["a"]["async_submit"]
    # one budget for both keys: a budget of 4/s per key would have met 429s from the
    # account's 5/s
    assert submit["accepted"] == 12 and sum(submit["limited"].values()) <= 1, submit
    assert submit["max_per_1s"] <= 5, submit


def test_one_account_401_is_retired_the_others_finish(tmp_path):
    manifest = shots_manifest(tmp_path, 12)
    out = tmp_path / "out"
    knobs = {"accounts": ACCOUNTS, "revoke_after": f"{KA}=3"}
    knobs |= {"queue_min": 0.3, "queue_max": 0.5, "gen_min": 0.3, "gen_max": 0.6}
    with sim(seed=SEED, **knobs) as server:
        result = cli(server, manifest, out, "--no-verify", "--json", keys=ACCOUNTS, rate=None)
        stats = server.stats()
        used_after = server._key_requests[KA]
    summary = json.loads(result.stdout)
    rows = report(out)
    a, b = rows[rows.account == "a"], rows[rows.account == "b"]
    # a's tasks in flight are left (running) for a later run; b finished the rest
    assert len(a) >= 1 and set(a.status) <= {"running"} and a.task_id.notna().all()
    assert set(b.status) == {"completed"} and len(b) + len(a) == 12
    assert rows.status.isin(["completed", "running"]).all()
    assert result.exit_code == 1 and summary["exit_code"] == 1
    assert summary["accounts"]["b"] == {"completed": len(b)}
    # after its first 401 (request 4), at most the calls already under way used the key
    assert used_after <= 3 + 8, used_after
    assert stats["polls_unknown"] == 0  # never polled with b's key
    events = (out / "events.jsonl").read_text(encoding="utf-8")
    assert "401 for account a" in events and "account retired" in events
    no_key_anywhere(out, result.output, KA, KB)


def test_every_account_401_stops_the_run_with_exit_3(tmp_path):
    manifest = shots_manifest(tmp_path, 4)
    out = tmp_path / "out"
    with sim(seed=SEED, accounts=ACCOUNTS, revoke_after=(f"{KA}=0", f"{KB}=0")) as server:
        result = cli(server, manifest, out, "--no-verify", keys=ACCOUNTS, rate=None)
    assert result.exit_code == 3, result.output
    assert set(report(out).status) == {"pending"}  # a refused submit created nothing


def test_resume_after_reordering_named_accounts_polls_each_task_with_its_account(tmp_path):
    manifest = shots_manifest(tmp_path, 8)
    out = tmp_path / "out"
    with sim(seed=SEED, accounts=f"{ACCOUNTS},c={KC}", queue_min=1.0, queue_max=1.5) as server:
        # tasks outlive the wait: failed as wait_timeout, their task ids kept
        first = cli(
            server,
            manifest,
            out,
            "--no-verify",
            "--max-wait",
            "0.3",
            keys=f"{ACCOUNTS},c={KC}",
            rate=None,
        )
        before = report(out)
        assert set(before.error_type.dropna()) == {"wait_timeout"}, first.output
        assert set(before.account) == {"a", "b", "c"}
        # reordered, and c no longer configured: its tasks are left alone, never polled by a/b
        second = cli(server, manifest, out, "--no-verify", keys=f"b={KB},a={KA}", rate=None)
        stats = server.stats()
    rows = report(out)
    done = rows[rows.account != "c"]
    assert set(done.status) == {"completed"}, second.output
    assert (done.task_id == before.set_index("job_id").loc[done.job_id].task_id.values).all()
    # c's tasks: back to running (to be polled, as every timed-out task is), left for a run
    # with c's key; never polled with another key (that would 404 and fail them as gone)
    assert set(rows[rows.account == "c"].status) == {"running"}
    assert stats["polls_unknown"] == 0 and stats["submits"] == 8  # nothing sent twice
    events = (out / "events.jsonl").read_text(encoding="utf-8")
    assert "account c is not configured" in events


def test_bare_keys_are_named_by_position_never_by_key(tmp_path):
    manifest = shots_manifest(tmp_path, 4)
    out = tmp_path / "out"
    with sim(seed=SEED, accounts=ACCOUNTS) as server:
        result = cli(server, manifest, out, "--no-verify", keys=f"{KA}, {KB}", rate=None)
    assert result.exit_code == 0, result.output
    assert set(report(out).account) <= {"account-1", "account-2"}
    assert [a.name for a in parse_keys_env(f"{KA},x={KC},{KB}")] == ["account-1", "x", "account-2"]


def test_keys_file_parsing_and_its_one_line_errors(tmp_path):
    good = tmp_path / "keys.txt"
    good.write_text(f"# team keys\n\nteam={KA}  # first\nteam={KB}\n{KC}\n", encoding="utf-8")
    accounts = parse_keys_file(good)
    assert [(a.name, a.keys) for a in accounts] == [("team", (KA, KB)), ("account-1", (KC,))]
    bad = tmp_path / "bad.txt"
    bad.write_text(f"ok={KA}\nbad name!={KB}\n={KC}\nok={KA}\nx=\naccount-9={KC}\n", "utf-8")
    manifest = shots_manifest(tmp_path, 2)
    result = CliRunner().invoke(
        main, ["run", str(manifest), "--keys-file", str(bad), "--base-url", "http://x", "-y"]
    )
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    for n in (2, 3, 4, 5, 6):
        assert any(line.startswith(f"{bad}:{n}: keys: ") for line in lines), (n, lines)
    assert "Traceback" not in result.output
    for key in (KA, KB, KC):
        assert key not in result.output and key[:12] not in result.output
    with pytest.raises(InputError) as caught:
        parse_keys_env(f"a={KA},,b b={KB}")
    assert str(caught.value) == (
        "TOAPIS_API_KEYS item 3: keys: an account name is letters, digits, '_', '.' or '-' "
        "(up to 64), starting with a letter or digit"
    )


def test_redactor_of_several_keys_redacts_each_in_every_encoding():
    redact = Redactor(KA, KB)
    for key in (KA, KB):
        escaped = "".join(f"\\u{ord(c):04x}" for c in key)
        for text in (key, escaped, key.replace("-", "%2D"), key[: len(key) // 2 + 1]):
            assert key[4:12] not in redact(f"echo: {text} end"), text
    assert redact("nothing secret here") == "nothing secret here"


def test_key_b_is_redacted_in_an_answer_to_key_a(tmp_path):
    """A server that echoes key B (plain, JSON-escaped) in its error to a call made with key
    A: the message the run keeps holds neither key."""
    escaped_b = "".join(f"\\u{ord(c):04x}" for c in KB)

    async def submit(request: web.Request) -> web.Response:
        text = f'{{"error": {{"message": "bad: {KB} or {escaped_b}", "type": "invalid"}}}}'
        return web.Response(status=422, text=text, content_type="application/json")

    async def main_() -> str:
        app = web.Application()
        app.router.add_post("/v1/videos/generations", submit)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            async with aiohttp.ClientSession() as session:
                keys = parse_keys_env(ACCOUNTS)
                made = _accounts(
                    keys, RunOptions(), FAST, f"http://127.0.0.1:{port}", session, print
                )
                client_a = made[0].clients[0]
                with pytest.raises(RequestRejected) as caught:
                    await client_a.submit({"model": "gemini_omni", "prompt": "x"})
                return str(caught.value)
        finally:
            await runner.cleanup()

    message = asyncio.run(main_())
    assert "[redacted]" in message and KB not in message and KB[3:12] not in message
    assert Rates().tier == "default"  # the accounts were built with the default budgets


# -- accounts recognised by their keys on resume (h-ident) ----------------------------------------
SIX = "vars: {n: [1, 2, 3, 4, 5, 6]}\nprompts:\n  - {id: 'job-{n}', prompt: 'a cat number {n}'}\n"


def _crash_run(manifest: Path, out: Path, server, keys_file: Path, crash_at: str):
    env = {k: v for k, v in os.environ.items() if k not in (CRASH_ENV, "TOAPIS_API_KEYS")}
    env.update({CRASH_ENV: crash_at, "TOAPIS_API_KEY": ""})
    args = ["run", str(manifest), "--out", str(out)]
    args += ["--base-url", server.base_url, "--yes", "--no-progress", "--no-verify"]
    args += ["--poll-interval", "0.2", "--reconcile", "--keys-file", str(keys_file)]
    return spawn.run(*args, env=env)


def test_bare_keys_reordered_after_a_crash_keep_each_task_with_its_own_key(tmp_path):
    """The review's repro: bare keys KA, KB; kill -9 right after the 4th POST left (its job
    `submitting`, others running); rerun with the keys file listing KB, KA. Every task is
    polled and looked up with the key that created it: all complete, one task per job, no
    404 from a wrong key, nothing resent (by name, account-1 is now KB: that polled KA's tasks
    with KB, failed them as gone, and resent the `submitting` one unflagged)."""
    manifest = tmp_path / "m.yaml"
    manifest.write_text(SIX, encoding="utf-8")
    first, second = tmp_path / "k1", tmp_path / "k2"
    first.write_text(f"{KA}\n{KB}\n", encoding="utf-8")
    second.write_text(f"{KB}\n{KA}\n", encoding="utf-8")
    out = tmp_path / "out"
    with sim(seed=SEED, keys=(KA, KB), gen_min=1.0, gen_max=2.0) as server:
        crashed = _crash_run(manifest, out, server, first, "after_post:4")
        assert crashed.returncode == -9, crashed.stderr
        args = ["run", str(manifest), "--out", str(out), "--base-url", server.base_url, "--yes"]
        args += ["--poll-interval", "0.2", "--no-verify", "--reconcile", "--keys-file"]
        env = {"TOAPIS_API_KEYS": "", "TOAPIS_API_KEY": ""}
        resumed = CliRunner(env=env).invoke(main, [*args, str(second)])
        stats = server.stats()
        owners = {t: owner(server, t) for t in server.state.tasks}
        sim_name = {key: server.state.config.account_of()[key] for key in (KA, KB)}
    assert resumed.exit_code == 0, resumed.output
    rows = report(out)
    assert set(rows.status) == {"completed"}, rows[["job_id", "status", "error_message"]]
    assert not rows.possible_duplicate.any()
    assert len(owners) == 6 and stats["submits"] == 6 and stats["max_submits_per_body"] == 1
    assert stats["polls_unknown"] == 0  # no status call ever asked with the other key
    # names stay as this folder first knew them: account-1 is KA's, whatever the order now
    key_of = {"account-1": KA, "account-2": KB}
    assert all(
        owners[t] == sim_name[key_of[a]] for t, a in zip(rows.task_id, rows.account, strict=True)
    )
    events = (out / "events.jsonl").read_text(encoding="utf-8")
    assert "account account-1: its key is account account-2's in this folder's journal" in events


def _encodings(key: str) -> set[bytes]:
    raw = key.encode()
    forms = {key, raw.hex(), raw.hex().upper(), urllib.parse.quote(key, safe="")}
    forms |= {base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()}
    forms |= base64_cores(raw)
    return {f.encode() for f in forms if len(f) >= 8}


def test_a_renamed_account_and_a_dropped_key_never_store_a_key_in_any_encoding(tmp_path):
    """Named account a renamed to z (same key) after a run that left tasks running: z polls
    a's tasks (recognised by its key's fingerprint) and they complete; b, no longer given,
    is left alone. Journal, events and reports hold neither key in any encoding."""
    manifest = shots_manifest(tmp_path, 6)
    out = tmp_path / "out"
    with sim(seed=SEED, accounts=ACCOUNTS, queue_min=1.0, queue_max=1.5) as server:
        first = cli(
            server, manifest, out, "--no-verify", "--max-wait", "0.3", keys=ACCOUNTS, rate=None
        )
        before = report(out)
        assert set(before.error_type.dropna()) == {"wait_timeout"}, first.output
        second = cli(server, manifest, out, "--no-verify", keys=f"z={KA}", rate=None)
        stats = server.stats()
    rows = report(out)
    assert set(rows[rows.account == "a"].status) == {"completed"}, second.output
    assert set(rows[rows.account == "b"].status) == {"running"}  # left for a run with b's key
    assert stats["polls_unknown"] == 0 and stats["submits"] == 6
    events = (out / "events.jsonl").read_text(encoding="utf-8")
    assert "account b is not configured" in events
    assert "account z: its key is account a's" in events
    forms = _encodings(KA) | _encodings(KB)
    files = [p for p in out.rglob("*") if p.is_file() and ".simulator" not in p.parts]
    assert any(p.name == "events.jsonl" for p in files) and len(files) > 4
    for path in files:
        data = path.read_bytes()
        for form in forms:
            assert form not in data, (path, form)


def test_match_recognises_accounts_by_fingerprint_not_by_name_or_place():
    stored = {"account-1": ["fa"], "account-2": ["fb"], "team": ["ft", "fu"]}
    ids, updated, notes = match(
        stored,
        [("account-1", {"fb"}), ("account-2", {"fc"}), ("studio", {"fu", "fv"})],
    )
    # KB is account-2 in the folder; the new key fc gets a name the folder has not used;
    # studio shares a key with team: it is team (and its new key is added)
    assert ids == [
        Identity("account-2", ("account-2",)),
        Identity("account-3", ("account-3",)),
        Identity("team", ("team",)),
    ]
    assert updated["team"] == ["ft", "fu", "fv"] and updated["account-1"] == ["fa"]
    assert updated["account-3"] == ["fc"] and len(notes) == 3
    # a configured account that holds keys of two journaled accounts answers for both
    ids, _, _ = match({"x": ["f1"], "y": ["f2"]}, [("x", {"f1", "f2"})])
    assert ids == [Identity("x", ("x", "y"))]
    assert match({}, [("a", {"f"})])[0] == [Identity("a", ("a",))]
