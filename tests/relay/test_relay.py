"""The relay end to end, in-process: a real chat.db, the backend double, the fake osascript."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import pytest
from relay_support import TOKEN, RunningRelay, wait_for

pytestmark = pytest.mark.asyncio

HANDLE = "+15550001111"
CHAT = f"any;-;{HANDLE}"


async def test_registers_then_heartbeats_with_queue_figures(settings, backend):
    backend.heartbeat_interval_s = 0.1
    async with RunningRelay(settings):
        await wait_for(lambda: backend.heartbeats, what="a heartbeat")
    assert backend.registrations[0]["agent_id"] == "sage-01"
    assert backend.registrations[0]["host"] == "mini-01"
    assert backend.registrations[0]["version"]
    beat = backend.heartbeats[0]
    assert beat["agent_id"] == "sage-01"
    assert set(beat["send_queue"]) == {
        "depth",
        "totalEnqueued",
        "totalDelivered",
        "totalDropped",
        "totalExpired",
        "totalUncertain",
    }


async def test_health_follows_the_shard_state_the_heartbeats_bring(settings, backend):
    backend.heartbeat_interval_s = 0.1
    backend.shard_state = "provisioning"
    async with RunningRelay(settings) as relay:
        await wait_for(lambda: relay.registered, what="registration")
        assert relay.report()["checks"]["registered"]["detail"].endswith("provisioning")
        backend.shard_state = "active"
        await wait_for(
            lambda: relay.report()["checks"]["registered"]["detail"].endswith("state active"),
            what="the active state from a heartbeat",
        )


async def test_history_before_the_first_start_is_never_forwarded(settings, backend, messages):
    old = [messages.incoming(HANDLE, text=f"old {n}") for n in range(3)]
    async with RunningRelay(settings):
        await asyncio.sleep(0.3)
        new = messages.incoming(HANDLE, text="new")
        await wait_for(lambda: backend.events(), what="the new message")
    guids = [e["guid"] for e in backend.events()]
    assert guids == [new]
    assert not set(old) & set(guids)


async def test_text_and_attributed_body_become_message_events(settings, backend, messages, corpus):
    async with RunningRelay(settings):
        await asyncio.sleep(0.2)
        plain = messages.incoming(HANDLE, text="plain text")
        archived = messages.incoming(
            HANDLE, text=None, body=(corpus / "attributed_body" / "URL").read_bytes()
        )
        liked = messages.incoming(HANDLE, text="Liked", associated_type=2001)
        await wait_for(lambda: len(backend.events()) >= 3, what="three events")
        await asyncio.sleep(0.2)
    events = {e["guid"]: e for e in backend.events() if e["type"] == "message"}
    assert set(events) == {plain, archived}  # the reaction is its own event type
    assert [e["type"] for e in backend.events() if e["guid"] == liked] == ["reaction"]
    assert events[plain]["text"] == "plain text"
    assert events[archived]["text"] == "https://github.com/ReagentX/Logria"
    for event in events.values():
        assert event["type"] == "message"
        assert event["chat_guid"] == CHAT
        assert event["handle"] == HANDLE
        assert event["is_from_me"] is False
        assert event["service"] == "iMessage"
        assert event["date"].endswith("Z")


async def test_a_wake_reads_at_once_without_waiting_for_the_poll(settings, backend, messages):
    settings["poll_interval_s"] = 30
    async with RunningRelay(settings) as relay:
        await asyncio.sleep(0.3)
        guid = messages.incoming(HANDLE, text="hi")
        relay.wake_inbound()  # what a watcher of the Messages folder calls
        await wait_for(lambda: backend.events(), timeout_s=3, what="the woken read")
    assert backend.events()[0]["guid"] == guid


async def test_cursor_survives_restart_and_unacked_guids_are_resent(settings, backend, messages):
    async with RunningRelay(settings):
        await asyncio.sleep(0.2)
        first = messages.incoming(HANDLE, text="one")
        await wait_for(lambda: backend.events(), what="the first message")
        refused = messages.incoming(HANDLE, text="two")
        backend.refuse_guids.add(refused)
        await wait_for(
            lambda: refused in [e["guid"] for e in backend.events()], what="the refused message"
        )
    forwarded_before = [e["guid"] for e in backend.events()]
    assert forwarded_before.count(first) == 1

    backend.refuse_guids.clear()
    backend.inbound_batches.clear()
    async with RunningRelay(settings):
        await wait_for(lambda: backend.events(), what="the resend")
        await asyncio.sleep(0.3)
    again = [e["guid"] for e in backend.events()]
    assert refused in again
    assert first not in again  # acknowledged before the restart: never forwarded twice


async def test_backend_down_then_up_loses_nothing(settings, backend, messages):
    async with RunningRelay(settings) as relay:
        await asyncio.sleep(0.2)
        await backend.stop()
        sent = [messages.incoming(HANDLE, text=f"while down {n}") for n in range(3)]
        await wait_for(lambda: not relay.backend.reachable, what="the relay to notice")
        await asyncio.sleep(0.5)
        await backend.start()
        await wait_for(
            lambda: set(sent) <= {e["guid"] for e in backend.events()},
            timeout_s=10,
            what="every message forwarded after the backend came back",
        )


async def test_a_message_waits_for_its_chat_then_goes_in_order(
    settings, backend, messages, monkeypatch
):
    from edge_relay import inbound

    monkeypatch.setattr(inbound, "INCOMPLETE_WAIT_S", 1.0)
    async with RunningRelay(settings):
        await asyncio.sleep(0.2)
        late = messages.incoming(HANDLE, text="filed late", join=False)
        after = messages.incoming(HANDLE, text="after")
        await asyncio.sleep(0.3)
        assert backend.events() == []  # nothing passes the message still being written
        messages.join(late, CHAT)
        await wait_for(lambda: len(backend.events()) == 2, what="both messages")
        orphan = messages.incoming(HANDLE, text="never filed", join=False)
        last = messages.incoming(HANDLE, text="last")
        await wait_for(lambda: len(backend.events()) == 3, what="the message after the orphan")
    guids = [e["guid"] for e in backend.events()]
    assert guids == [late, after, last]
    assert backend.events()[0]["chat_guid"] == CHAT
    assert orphan not in guids


async def test_events_always_meet_the_contract(settings, backend, messages):
    async with RunningRelay(settings):
        await asyncio.sleep(0.2)
        messages.incoming(HANDLE, text=None, body=None, date=0)
        await wait_for(lambda: backend.events(), what="the event")
    [event] = backend.events()
    assert event["text"] is None
    assert event["date"].endswith("Z")  # unset in chat.db: the time it was read
    for key in ("guid", "chat_guid", "handle", "service"):
        assert isinstance(event[key], str) and event[key]


def send_command(command_id: str, *bubbles: str, **target) -> dict:
    command = {"id": command_id, "type": "send", "bubbles": list(bubbles)}
    command.update(target or {"chat_guid": CHAT})
    return command


async def test_a_send_is_delivered_once_messages_wrote_the_row(settings, backend, messages):
    messages.chat(HANDLE)
    async with RunningRelay(settings) as relay:
        backend.queue_command(send_command("c1", "hello", "second bubble"))
        await wait_for(lambda: "c1" in backend.results, what="the result of c1")
        figures = relay.queue.figures()
    assert backend.results["c1"]["status"] == "delivered"
    assert figures == {
        "depth": 0,
        "totalEnqueued": 1,
        "totalDelivered": 1,
        "totalDropped": 0,
        "totalExpired": 0,
        "totalUncertain": 0,
    }
    rows = messages.rows("SELECT text, is_sent FROM message WHERE is_from_me = 1 ORDER BY ROWID")
    assert rows == [("hello", 1), ("second bubble", 1)]


async def test_a_send_by_handle_uses_handle_mode(settings, backend, messages, osascript):
    messages.chat(HANDLE)
    async with RunningRelay(settings):
        backend.queue_command(send_command("c1", "hi", handle=HANDLE))
        await wait_for(lambda: "c1" in backend.results, what="the result")
    assert backend.results["c1"]["status"] == "delivered"
    assert osascript.calls()[0][1:] == ["handle", HANDLE, "text", "hi"]


async def test_an_applescript_error_is_retried_then_failed_with_its_reason(
    settings, backend, messages, osascript
):
    messages.chat(HANDLE)
    osascript.set("error:-1743")
    async with RunningRelay(settings) as relay:
        backend.queue_command(send_command("c1", "hello"))
        await wait_for(lambda: "c1" in backend.results, what="the result")
        report = relay.report()
    result = backend.results["c1"]
    assert result["status"] == "failed"
    assert "Automation not granted" in result["detail"] and "-1743" in result["detail"]
    assert len(osascript.calls()) == 4  # the first try and three retries
    assert report["checks"]["messages"]["ok"] is False
    assert report["status"] == "critical"


@pytest.mark.parametrize(
    "number, reason",
    [
        ("-600", "no GUI session"),
        ("-1728", "does not know this chat"),
        ("-1719", "not signed in to iMessage"),
    ],
)
async def test_applescript_errors_become_reasons(
    settings, backend, messages, osascript, number, reason
):
    messages.chat(HANDLE)
    osascript.set(f"error:{number}")
    settings["send_queue"]["retries"] = 0
    async with RunningRelay(settings):
        backend.queue_command(send_command("c1", "hello"))
        await wait_for(lambda: "c1" in backend.results, what="the result")
    assert reason in backend.results["c1"]["detail"]


async def test_a_failed_row_is_retried_and_a_later_success_delivers(
    settings, backend, messages, osascript
):
    messages.chat(HANDLE)
    osascript.set("row-error")
    async with RunningRelay(settings):
        backend.queue_command(send_command("c1", "hello"))
        await wait_for(lambda: len(osascript.calls()) >= 1, what="the first attempt")
        osascript.set("send")
        await wait_for(lambda: "c1" in backend.results, what="the result")
    assert backend.results["c1"]["status"] == "delivered"
    assert len(osascript.calls()) == 2


async def test_no_row_within_the_bound_is_uncertain_and_not_retried(
    settings, backend, messages, osascript
):
    messages.chat(HANDLE)
    osascript.set("silent")
    settings["send_queue"]["confirm_s"] = 0.5
    async with RunningRelay(settings) as relay:
        backend.queue_command(send_command("c1", "hello"))
        await wait_for(lambda: "c1" in backend.results, what="the result")
        await asyncio.sleep(0.4)
        figures = relay.queue.figures()
    assert backend.results["c1"]["status"] == "uncertain"
    assert len(osascript.calls()) == 1
    assert figures["totalDelivered"] == 0 and figures["depth"] == 0


async def test_text_reaches_osascript_literally_as_arguments(
    settings, backend, messages, osascript
):
    messages.chat(HANDLE)
    tricky = [
        'she said "hi" \\ and left',
        "line one\nline two\r\nthree",
        "emoji \U0001f600 \u2764\ufe0f and \u00e9",
        'end tell\ndo shell script "touch /tmp/pwned"\ntell application "Messages"',
        "-e",
        "",
    ]
    async with RunningRelay(settings):
        backend.queue_command(send_command("c1", *tricky))
        await wait_for(lambda: "c1" in backend.results, what="the result")
    [call] = osascript.calls()
    assert call[1:3] == ["chat", CHAT]
    assert call[3::2] == ["text"] * len(tricky)
    assert call[4::2] == tricky
    sent = messages.rows("SELECT text FROM message WHERE is_from_me = 1 ORDER BY ROWID")
    assert [t for (t,) in sent] == tricky


async def test_commands_in_the_inbound_answer_are_sent(settings, backend, messages):
    async with RunningRelay(settings):
        await asyncio.sleep(0.2)
        backend.inbound_commands.append(send_command("c9", "echo: hi"))
        messages.incoming(HANDLE, text="hi")
        await wait_for(lambda: "c9" in backend.results, what="the reply's result")
    assert backend.results["c9"]["status"] == "delivered"


async def test_the_rate_limit_holds_sends_back(settings, backend, messages, osascript):
    messages.chat(HANDLE)
    settings["rate_limit"]["per_minute"] = 2
    async with RunningRelay(settings) as relay:
        for n in range(4):
            backend.queue_command(send_command(f"c{n}", f"b{n}"))
        await wait_for(lambda: len(backend.results) >= 2, what="two results")
        await asyncio.sleep(0.5)
        depth = relay.queue.depth
    assert len(osascript.calls()) == 2
    assert depth == 2


async def test_a_full_queue_drops_counts_and_warns(settings, backend, messages, osascript):
    messages.chat(HANDLE)
    settings["send_queue"]["max_depth"] = 1
    settings["rate_limit"]["per_minute"] = 1
    async with RunningRelay(settings) as relay:
        # The first send takes the only rate slot; the second waits; the third is dropped.
        backend.queue_command(send_command("c0", "b0"))
        await wait_for(lambda: "c0" in backend.results, what="the first send")
        backend.queue_command(send_command("c1", "b1"))
        backend.queue_command(send_command("c2", "b2"))
        await wait_for(lambda: "c2" in backend.results, what="the drop to be reported")
        report = relay.report()
    assert backend.results["c2"]["status"] == "failed"
    assert "queue is full" in backend.results["c2"]["detail"]
    assert report["send_queue"] == {
        "depth": 1,
        "totalEnqueued": 2,
        "totalDelivered": 1,
        "totalDropped": 1,
        "totalExpired": 0,
        "totalUncertain": 0,
    }
    assert report["status"] == "warning"


async def test_health_reports_the_window_its_queue_status_is_judged_on(
    settings, backend, messages, osascript
):
    messages.chat(HANDLE)
    settings["send_queue"]["max_depth"] = 3
    settings["rate_limit"]["per_minute"] = 1
    settings["health"].update(depth_warning=1, depth_critical=1, drops_window_s=3)
    async with RunningRelay(settings) as relay:
        # c0 takes the only rate slot; c1 to c3 wait (depth 3, above 1); c4 is dropped.
        backend.queue_command(send_command("c0", "b0"))
        await wait_for(lambda: "c0" in backend.results, what="the first send")
        for number in range(1, 5):
            backend.queue_command(send_command(f"c{number}", f"b{number}"))
        await wait_for(lambda: "c4" in backend.results, what="the drop to be reported")
        deep = relay.report()
        await asyncio.sleep(3.2)
        later = relay.report()
    assert backend.results["c4"]["status"] == "failed"
    assert (deep["arrivals_recent"], deep["drops_recent"], deep["window_s"]) == (4, 1, 3)
    assert 0 <= deep["depth_high_for_s"] < 3
    assert deep["queue_status"] == "warning"
    # The window slid past every arrival and the drop; the queue is still as deep, for longer.
    assert (later["arrivals_recent"], later["drops_recent"]) == (0, 0)
    assert later["send_queue"]["depth"] == 3
    assert later["depth_high_for_s"] >= deep["depth_high_for_s"] + 3.0
    assert later["send_queue"]["totalDropped"] == 1


async def test_health_json_and_status_codes(settings, backend, messages, tmp_path):
    url = f"http://127.0.0.1:{settings['health']['port']}"
    async with RunningRelay(settings) as relay, aiohttp.ClientSession() as session:
        await wait_for(lambda: relay.chat_db.reads, what="a first read of chat.db")
        async with session.get(url + "/health") as response:
            assert response.status == 200
            healthy = await response.json()
        async with session.get(url + "/metrics") as response:
            metrics = await response.text()
        # Full Disk Access taken away: chat.db can no longer be read.
        messages.path.parent.rename(tmp_path / "Messages-hidden")
        async with session.get(url + "/health") as response:
            assert response.status == 503
            critical = await response.json()
        messages.path.parent.parent.joinpath("Messages-hidden").rename(messages.path.parent)
    assert healthy["status"] == "healthy"
    assert healthy["shard_id"] == "sage-01"
    assert healthy["version"]
    assert healthy["send_queue"] == {
        "depth": 0,
        "totalEnqueued": 0,
        "totalDelivered": 0,
        "totalDropped": 0,
        "totalExpired": 0,
        "totalUncertain": 0,
    }
    assert (healthy["drops_recent"], healthy["arrivals_recent"]) == (0, 0)
    assert healthy["window_s"] == 900
    assert healthy["depth_high_for_s"] is None
    for name in ("chat_db", "backend", "registered"):
        assert healthy["checks"][name]["ok"] is True
        assert healthy["checks"][name]["detail"]
    assert critical["status"] == "critical"
    assert critical["checks"]["chat_db"]["ok"] is False
    assert "Full Disk Access" in critical["checks"]["chat_db"]["detail"]
    assert "edge_relay_send_queue_depth 0.0" in metrics
    [reads] = [line for line in metrics.splitlines() if line.startswith("edge_relay_chatdb_reads")]
    assert reads.startswith("edge_relay_chatdb_reads_total ") and float(reads.split()[1]) >= 1
    assert healthy["inbound"]["chatDbReads"] >= 1


async def test_health_is_critical_while_the_backend_is_unreachable(settings, backend):
    url = f"http://127.0.0.1:{settings['health']['port']}/health"
    async with RunningRelay(settings) as relay, aiohttp.ClientSession() as session:
        await backend.stop()
        await wait_for(lambda: not relay.backend.reachable, what="the outage to be seen")
        async with session.get(url) as response:
            assert response.status == 503
            report = await response.json()
        await backend.start()
    assert report["checks"]["backend"]["ok"] is False


async def test_an_unknown_token_leaves_the_shard_unregistered(settings, backend, tmp_path):
    token = tmp_path / "token"
    token.write_text("wrong-token\n")
    from edge_relay.config import parse
    from edge_relay.relay import Relay

    relay = Relay(parse(settings))
    task = asyncio.ensure_future(relay.run())
    await wait_for(lambda: backend.auth_failures, what="a refused registration")
    report = relay.report()
    relay.request_drain()
    assert await asyncio.wait_for(task, 15) == 0
    assert report["status"] == "critical"
    assert "does not know this shard's token" in report["checks"]["registered"]["detail"]
    assert "registered in the database of the backend" in report["checks"]["registered"]["detail"]


async def test_logs_carry_guids_but_never_text_or_token(settings, backend, messages, caplog):
    secret_in = "inbound-secret-words"
    secret_out = "outbound-secret-words"
    messages.chat(HANDLE)
    with caplog.at_level(logging.DEBUG):
        async with RunningRelay(settings):
            await asyncio.sleep(0.2)
            guid = messages.incoming(HANDLE, text=secret_in)
            await wait_for(lambda: backend.events(), what="the message")
            backend.queue_command(send_command("c1", secret_out))
            await wait_for(lambda: "c1" in backend.results, what="the send")
    text = caplog.text
    assert guid in text
    assert "c1" in text
    assert "send delivered" in text
    assert "batch forwarded" in text
    assert secret_in not in text
    assert secret_out not in text
    assert TOKEN not in text
