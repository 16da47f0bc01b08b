"""The relay side of the contract: auth, register, heartbeat, inbound, long poll, results."""

import asyncio
import logging
import time

import psycopg
import pytest

pytestmark = pytest.mark.asyncio


async def test_requests_without_a_known_token_get_401(backend, shards):
    shards.add("sage-01")
    for token in (None, "edge_not-a-real-token", backend.admin_token):
        status, body = await backend.call(
            "POST", "/edge/register", token, {"agent_id": "sage-01", "version": "1.0.0"}
        )
        assert status == 401, body
        assert "token" in body["error"]
    assert shards.row("sage-01")["relay_version"] is None


async def test_shard_token_is_not_an_admin_token(backend, shards):
    token = shards.add("sage-01")
    status, body = await backend.call("GET", "/admin/shards", token)
    assert status == 401
    assert "admin token" in body["error"]


async def test_disabled_shard_gets_403_everywhere(backend, shards):
    token = shards.add("sage-01", state="disabled")
    calls = [
        ("POST", "/edge/register", {"agent_id": "sage-01", "version": "1.0.0"}),
        ("POST", "/edge/inbound", {"events": []}),
        ("GET", "/edge/commands", None),
        ("POST", "/edge/commands/cmd_x/result", {"status": "delivered"}),
    ]
    for method, path, body in calls:
        status, answer = await backend.call(method, path, token, body)
        assert status == 403, (path, answer)
        assert "sage-01" in answer["error"] and "disabled" in answer["error"]


async def test_register_records_version_host_and_time(backend, shards):
    token = shards.add("sage-01", state="provisioning")
    status, body = await backend.call(
        "POST",
        "/edge/register",
        token,
        {"agent_id": "sage-01", "version": "1.2.0", "host": "mini-01"},
    )
    assert status == 200
    assert body["shard_id"] == "sage-01" and body["state"] == "provisioning"
    assert body["heartbeat_interval_s"] > 0
    row = shards.row("sage-01")
    assert (row["relay_version"], row["host"]) == ("1.2.0", "mini-01")
    assert row["last_seen_at"].endswith("Z")


async def test_register_with_another_agent_id_is_refused_and_changes_nothing(backend, shards):
    token = shards.add("sage-01")
    status, body = await backend.call(
        "POST", "/edge/register", token, {"agent_id": "sage-02", "version": "1.2.0"}
    )
    assert status == 409
    assert "sage-01" in body["error"] and "sage-02" in body["error"]
    assert shards.row("sage-01")["relay_version"] is None


async def test_register_without_version_is_a_400_sentence(backend, shards):
    token = shards.add("sage-01")
    status, body = await backend.call(
        "POST", "/edge/register", token, {"agent_id": "sage-01"}, conforming=False
    )
    assert status == 400
    assert "'version'" in body["error"]
    status, body = await backend.call(
        "POST", "/edge/register", token, raw="{not json", conforming=False
    )
    assert status == 400
    assert "not valid JSON" in body["error"]


async def test_heartbeat_updates_last_seen_and_keeps_queue_figures(backend, shards):
    token = shards.add("sage-01")
    figures = {"depth": 3, "totalEnqueued": 1542, "totalDelivered": 1539, "totalDropped": 0}
    status, body = await backend.call(
        "POST",
        "/edge/heartbeat",
        token,
        {"agent_id": "sage-01", "version": "1.2.0", "status": "healthy", "send_queue": figures},
    )
    assert (status, body) == (200, {"ok": True, "state": shards.row("sage-01")["state"]})
    first_seen = shards.row("sage-01")["last_seen_at"]
    assert first_seen is not None

    await asyncio.sleep(0.01)
    await backend.call(
        "POST",
        "/edge/heartbeat",
        token,
        {"agent_id": "sage-01", "version": "1.2.0", "status": "warning", "send_queue": figures},
    )
    assert shards.row("sage-01")["last_seen_at"] > first_seen

    status, body = await backend.admin("GET", "/admin/shards")
    (row,) = body["shards"]
    assert row["heartbeat"]["status"] == "warning"
    assert row["heartbeat"]["send_queue"] == figures


async def test_heartbeat_with_bad_queue_figures_is_refused(backend, shards):
    token = shards.add("sage-01")
    status, body = await backend.call(
        "POST",
        "/edge/heartbeat",
        token,
        {"agent_id": "sage-01", "version": "1", "status": "healthy", "send_queue": {"depth": -1}},
        conforming=False,
    )
    assert status == 400
    assert "send_queue.depth" in body["error"]
    assert shards.row("sage-01")["last_seen_at"] is None


async def test_inbound_message_gets_one_echo_reply_through_the_poll(backend, shards, message_event):
    token = shards.add("sage-01")
    answer = await backend.inbound(token, [message_event("g1", "how are you?")])
    assert answer == {"accepted": ["g1"], "commands": []}

    (command,) = await backend.poll(token)
    assert command["type"] == "send"
    assert command["chat_guid"] == "any;-;+15550101001"
    assert command["bubbles"] == ["echo: how are you?"]
    assert command["expires_at"].endswith("Z")
    assert await backend.poll(token) == []


async def test_inbound_is_idempotent_by_guid(backend, shards, message_event):
    token = shards.add("sage-01")
    batch = [message_event("g1", "one"), message_event("g2", "two")]
    assert (await backend.inbound(token, batch))["accepted"] == ["g1", "g2"]
    again = await backend.inbound(token, batch + [message_event("g1", "one")])
    assert again["accepted"] == ["g1", "g2", "g1"]

    commands = await backend.poll(token)
    assert [c["bubbles"] for c in commands] == [["echo: one"], ["echo: two"]]
    assert len(shards.query("SELECT guid FROM inbound_events")) == 2


async def test_same_guid_on_two_shards_is_two_events(backend, shards, message_event):
    first, second = shards.add("sage-01"), shards.add("sage-02")
    await backend.inbound(first, [message_event("g1")])
    await backend.inbound(second, [message_event("g1")])
    assert len(await backend.poll(first)) == 1
    assert len(await backend.poll(second)) == 1


async def test_own_messages_and_other_events_get_no_reply(backend, shards, message_event):
    token = shards.add("sage-01")
    events = [
        message_event("g1", "sent by the shard", is_from_me=True),
        {"guid": "g2", "type": "reaction", "target_guid": "g1"},
    ]
    assert (await backend.inbound(token, events))["accepted"] == ["g1", "g2"]
    assert await backend.poll(token) == []


async def test_a_bad_event_rejects_the_whole_batch(backend, shards, message_event):
    token = shards.add("sage-01")
    bad = dict(message_event("g2"), date="yesterday")
    status, body = await backend.call(
        "POST", "/edge/inbound", token, {"events": [message_event("g1"), bad]}, conforming=False
    )
    assert status == 400
    assert "event 1" in body["error"] and "'date'" in body["error"]
    assert shards.query("SELECT guid FROM inbound_events") == []
    assert await backend.poll(token) == []


@pytest.mark.parametrize("participants", ["+15550002222", [""], ["+15550002222", 7]])
async def test_participants_that_are_not_a_list_of_handles_are_refused(
    backend, shards, message_event, participants
):
    token = shards.add("sage-01")
    bad = dict(message_event("g1"), participants=participants)
    status, body = await backend.call(
        "POST", "/edge/inbound", token, {"events": [bad]}, conforming=False
    )
    assert status == 400
    assert "'participants' must be a list of handles" in body["error"]
    assert shards.query("SELECT guid FROM inbound_events") == []


async def test_a_group_message_with_its_participants_gets_a_reply_in_the_group(
    backend, shards, message_event
):
    token = shards.add("sage-01")
    group = dict(
        message_event("g1"),
        chat_guid="any;+;chat123456789",
        is_group=True,
        participants=["+15550002222", "+15550003333"],
    )
    assert (await backend.inbound(token, [group]))["accepted"] == ["g1"]
    [command] = await backend.poll(token)
    assert command["chat_guid"] == "any;+;chat123456789"


async def test_logs_carry_neither_text_nor_token(backend, shards, message_event, caplog):
    caplog.set_level(logging.DEBUG, logger="edge_backend")
    token = shards.add("sage-01")
    await backend.inbound(token, [message_event("g-log", "my secret plans")])
    await backend.poll(token)
    assert "g-log" in caplog.text
    assert "secret plans" not in caplog.text
    assert token not in caplog.text


async def test_poll_waits_when_there_is_nothing(backend, shards):
    token = shards.add("sage-01")
    started = time.monotonic()
    assert await backend.poll(token, wait=1) == []
    assert 0.9 <= time.monotonic() - started < 3


async def test_poll_answers_as_soon_as_a_command_is_queued(backend, shards, message_event):
    token = shards.add("sage-01")
    started = time.monotonic()
    poll = asyncio.ensure_future(backend.poll(token, wait=10))
    await asyncio.sleep(0.3)
    assert not poll.done()
    await backend.inbound(token, [message_event("g1", "ping")])
    commands = await asyncio.wait_for(poll, timeout=5)
    assert [c["bubbles"] for c in commands] == [["echo: ping"]]
    assert time.monotonic() - started < 3


async def test_poll_of_another_shard_does_not_see_the_command(backend, shards, message_event):
    first, second = shards.add("sage-01"), shards.add("sage-02")
    await backend.inbound(first, [message_event("g1")])
    assert await backend.poll(second) == []
    assert len(await backend.poll(first)) == 1


@pytest.mark.parametrize("wait", ["31", "-1", "soon"])
async def test_poll_wait_out_of_range_is_refused(backend, shards, wait):
    token = shards.add("sage-01")
    status, body = await backend.call(
        "GET", "/edge/commands", token, params={"wait": wait}, conforming=False
    )
    assert status == 400
    assert "0 to 30" in body["error"]


async def test_command_without_result_is_handed_out_again(start_backend, shards, message_event):
    backend = await start_backend(lease_timeout_s=0.5)
    token = shards.add("sage-01")
    await backend.inbound(token, [message_event("g1")])
    (first,) = await backend.poll(token)
    assert await backend.poll(token) == []

    # A waiting poll wakes when the lease runs out, without any new command.
    started = time.monotonic()
    (again,) = await backend.poll(token, wait=5)
    assert again["id"] == first["id"]
    assert 0.3 <= time.monotonic() - started < 3

    status, _ = await backend.call(
        "POST", f"/edge/commands/{first['id']}/result", token, {"status": "delivered"}
    )
    assert status == 200
    await asyncio.sleep(0.6)
    assert await backend.poll(token) == []


async def test_command_never_polled_before_expiry_is_expired(start_backend, shards, message_event):
    backend = await start_backend(command_ttl_s=0.2)
    token = shards.add("sage-01")
    await backend.inbound(token, [message_event("g1")])
    await asyncio.sleep(0.3)
    assert await backend.poll(token) == []
    (row,) = shards.query("SELECT status, detail FROM edge_commands")
    assert row["status"] == "expired"
    assert "expired" in row["detail"]


@pytest.mark.parametrize("outcome", ["delivered", "failed", "expired", "uncertain"])
async def test_results_are_recorded_once(backend, shards, message_event, outcome):
    token = shards.add("sage-01")
    await backend.inbound(token, [message_event("g1")])
    (command,) = await backend.poll(token)
    path = f"/edge/commands/{command['id']}/result"

    status, body = await backend.call("POST", path, token, {"status": outcome, "detail": "why"})
    assert (status, body) == (200, {"ok": True})
    (row,) = shards.query("SELECT status, detail, finished_at FROM edge_commands")
    assert (row["status"], row["detail"]) == (outcome, "why")
    assert row["finished_at"] is not None

    status, _ = await backend.call("POST", path, token, {"status": outcome})
    assert status == 200
    other = "failed" if outcome == "delivered" else "delivered"
    status, body = await backend.call("POST", path, token, {"status": other})
    assert status == 409
    assert outcome in body["error"]
    assert shards.query("SELECT status FROM edge_commands")[0]["status"] == outcome


async def test_result_for_unknown_or_foreign_command_is_404(backend, shards, message_event):
    first, second = shards.add("sage-01"), shards.add("sage-02")
    await backend.inbound(first, [message_event("g1")])
    (command,) = await backend.poll(first)
    for token, command_id in ((first, "cmd_nosuch"), (second, command["id"])):
        status, body = await backend.call(
            "POST", f"/edge/commands/{command_id}/result", token, {"status": "delivered"}
        )
        assert status == 404
        assert command_id in body["error"]
    assert shards.query("SELECT status FROM edge_commands")[0]["status"] == "leased"


async def test_result_with_unknown_status_is_400(backend, shards, message_event):
    token = shards.add("sage-01")
    await backend.inbound(token, [message_event("g1")])
    (command,) = await backend.poll(token)
    status, body = await backend.call(
        "POST",
        f"/edge/commands/{command['id']}/result",
        token,
        {"status": "sent"},
        conforming=False,
    )
    assert status == 400
    assert "delivered" in body["error"]


async def test_lost_database_connection_is_503_then_recovers(start_backend, shards, dsn):
    if not dsn.startswith("postgresql"):
        pytest.skip("only a PostgreSQL connection can be cut from outside the backend")
    backend = await start_backend()
    token = shards.add("sage-01")
    assert await backend.poll(token) == []

    # The test's helper shares the backend's connection; cut it from another one.
    (row,) = shards.query("SELECT pg_backend_pid() AS pid")
    with psycopg.connect(dsn, autocommit=True) as other:
        other.execute("SELECT pg_terminate_backend(%s)", (row["pid"],))
        for _ in range(50):
            gone = (
                other.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (row["pid"],)
                ).fetchone()[0]
                == 0
            )
            if gone:
                break
            await asyncio.sleep(0.1)
    status, body = await backend.call("GET", "/edge/commands", token)
    assert status == 503
    assert "unavailable" in body["error"]
    assert await backend.poll(token) == []
