"""Events the backend will not take are parked, kept whole, and never stall the shard."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import List

import aiohttp
import pytest
import pytest_asyncio
import yaml
from aiohttp import web
from edge_relay import inbound as inbound_module
from edge_relay.backend import Backend
from edge_relay.chatdb import ChatDB
from edge_relay.inbound import Inbound, Pending, halves
from edge_relay.state import StateStore
from relay_support import CORPUS, TOKEN, BackendDouble, Messages, RunningRelay, wait_for

CHAT_A, CHAT_B, CHAT_C = "+15550001111", "+15550002222", "+15550003333"
SECRET = "the secret words of a person"


class RefusingBackend(BackendDouble):
    """Refuses with `status` every batch holding a guid of `bad` or an event type of
    `bad_types`, as a backend that checks a batch as a whole does, quoting the event's text in
    its reason (a careless backend). Only the batches it takes are recorded as events."""

    def __init__(self, status: int = 400):
        super().__init__()
        self.status = status
        self.bad: set = set()
        self.bad_types: set = set()
        self.requests: List[List[str]] = []

    async def inbound(self, request: web.Request) -> web.Response:
        events = (await request.json())["events"]
        self.requests.append([event["guid"] for event in events])
        for index, event in enumerate(events):
            if event["guid"] in self.bad or event["type"] in self.bad_types:
                reason = (
                    f"event {index} ({event['guid']}): field 'type' must be one of message, "
                    f"reaction, not {event.get('text')!r}"
                )
                return web.json_response({"error": reason}, status=self.status)
        return await super().inbound(request)

    def tries_of(self, guid: str) -> int:
        return sum(guid in request for request in self.requests)


@pytest_asyncio.fixture
async def refusing(settings):
    backend = RefusingBackend()
    await backend.start()
    settings["backend"]["url"] = backend.url
    yield backend
    await backend.stop()


@pytest.fixture
def quick(monkeypatch):
    """Back-offs of a test's length; parking after PARK_AFTER left-outs over 1 s."""
    monkeypatch.setattr(inbound_module, "BACKOFF_FIRST_S", 0.05)
    monkeypatch.setattr(inbound_module, "BACKOFF_MAX_S", 0.2)
    monkeypatch.setattr(inbound_module, "PARK_AFTER_S", 1.0)


def recorded(backend: BackendDouble) -> List[str]:
    """Guids of the batches the backend answered with 200, in the order it answered them."""
    return [event["guid"] for event in backend.events()]


async def stopped_once(settings: dict) -> None:
    """Runs the relay's first start (it reads from now on) and stops it."""
    async with RunningRelay(settings) as relay:
        await wait_for(lambda: relay.inbound.ledger.initialised, 5, "the first start")


def parked_cli(settings: dict, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(settings))
    return subprocess.run(
        [sys.executable, "-m", "edge_relay", "parked", "--config", str(path), *extra],
        capture_output=True,
        text=True,
        timeout=30,
    )


def parked_rows(settings: dict) -> List[tuple]:
    conn = sqlite3.connect(str(Path(settings["state_dir"]) / "relay-state.db"))
    try:
        return conn.execute(
            "SELECT guid, chat_guid, status, reason, attempts, first_attempt_at, "
            "last_attempt_at, event FROM inbound_parked ORDER BY guid"
        ).fetchall()
    finally:
        conn.close()


def rowid_of(messages: Messages, guid: str) -> int:
    [(rowid,)] = messages.rows("SELECT ROWID FROM message WHERE guid = ?", (guid,))
    return rowid


@pytest.mark.asyncio
async def test_a_refused_event_is_parked_and_every_other_flows(
    settings, refusing, messages, tmp_path, caplog
):
    caplog.set_level(logging.INFO, logger="edge_relay")
    await stopped_once(settings)
    # Written while the relay is stopped, so its next start reads them in one batch.
    a1 = messages.incoming(CHAT_A, text="a one")
    bad = messages.incoming(CHAT_A, text=SECRET)
    a3 = messages.incoming(CHAT_A, text="a three")
    b1 = messages.incoming(CHAT_B, text="b one")
    b2 = messages.incoming(CHAT_B, text="b two")
    c1 = messages.incoming(CHAT_C, text="c one")
    refusing.bad.add(bad)
    url = f"http://127.0.0.1:{settings['health']['port']}"

    async with RunningRelay(settings) as relay:
        await wait_for(lambda: {a1, a3, b1, b2, c1} <= set(recorded(refusing)), 10, "the rest")
        await wait_for(lambda: relay.inbound.ledger.settled == rowid_of(messages, c1), 5, "mark")
        async with aiohttp.ClientSession() as session:
            async with session.get(url + "/health") as response:
                report = await response.json()
            async with session.get(url + "/metrics") as response:
                metrics = await response.text()
        listing = await asyncio.to_thread(parked_cli, settings, tmp_path)

    # One batch of the six, refused, then halves down to the bad event alone.
    assert refusing.requests[0] == [a1, bad, a3, b1, b2, c1]
    assert [bad] in refusing.requests
    assert bad not in recorded(refusing)
    order = recorded(refusing)
    assert [g for g in order if g in (a1, a3)] == [a1, a3]
    assert [g for g in order if g in (b1, b2)] == [b1, b2]

    [row] = parked_rows(settings)
    assert row[:3] == (bad, f"any;-;{CHAT_A}", 400)
    assert row[3].startswith(f"event 0 ({bad}): field 'type' must be one of")
    assert SECRET not in row[3] and "[text]" in row[3]
    assert row[4] == refusing.tries_of(bad) and row[5] <= row[6]
    assert json.loads(row[7])["text"] == SECRET  # kept whole, text included

    check = report["checks"]["backend_refused"]
    assert report["status"] == "warning" and report["checks"]["backend"]["ok"] is True
    assert check["warning"] is True and check["parked"] == 1 and check["oldest_guid"] == bad
    assert "edge_relay_inbound_parked_total 1.0" in metrics
    assert "edge_relay_inbound_parked_waiting 1.0" in metrics

    assert listing.returncode == 0, listing.stderr
    assert bad in listing.stdout and f"any;-;{CHAT_A}" in listing.stdout
    assert "400" in listing.stdout and "--retry" in listing.stdout
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert [w for w in warnings if w.startswith(f"event {bad} parked")]
    for text in (SECRET, "a one", "b two"):
        assert text not in caplog.text and text not in listing.stdout

    # A restart keeps it parked and sends nothing again.
    refusing.requests.clear()
    async with RunningRelay(settings) as relay:
        await asyncio.sleep(0.5)
        assert relay.report()["checks"]["backend_refused"]["parked"] == 1
    assert refusing.requests == []
    assert [row[0] for row in parked_rows(settings)] == [bad]


@pytest.mark.asyncio
async def test_retry_forwards_a_parked_event_once_the_backend_takes_it(
    settings, refusing, messages, tmp_path
):
    await stopped_once(settings)
    bad = messages.incoming(CHAT_A, text=SECRET)
    refusing.bad.add(bad)
    async with RunningRelay(settings) as relay:
        await wait_for(lambda: parked_rows(settings), 10, "the event to be parked")
        after = messages.incoming(CHAT_A, text="after it")
        await wait_for(lambda: after in recorded(refusing), 5, "the chat to go on")

        unknown = await asyncio.to_thread(parked_cli, settings, tmp_path, "--retry", "NO-SUCH")
        assert unknown.returncode == 1
        assert "no parked event has guid NO-SUCH" in unknown.stderr
        assert parked_rows(settings)[0][4] == refusing.tries_of(bad)

        # Retried while the backend still refuses it: one more try, parked again at once.
        tries = refusing.tries_of(bad)
        again = await asyncio.to_thread(parked_cli, settings, tmp_path, "--retry", bad)
        assert again.returncode == 0, again.stderr
        await wait_for(lambda: refusing.tries_of(bad) == tries + 1, 5, "the retry")
        await asyncio.sleep(0.3)
        assert refusing.tries_of(bad) == tries + 1
        [row] = parked_rows(settings)
        assert row[4] == tries + 1

        # The backend now takes it: forwarded once more and off the list.
        refusing.bad.discard(bad)
        done = await asyncio.to_thread(parked_cli, settings, tmp_path, "--retry")
        assert done.returncode == 0 and "1 parked event(s) marked" in done.stdout
        await wait_for(lambda: bad in recorded(refusing), 5, "the parked event to be accepted")
        await wait_for(lambda: not parked_rows(settings), 5, "the table to be empty")
        report = relay.report()
    assert report["checks"]["backend_refused"] == {
        "ok": True,
        "detail": "no inbound event parked",
        "parked": 0,
    }
    assert (report["inbound"]["parked"], report["inbound"]["totalParked"]) == (0, 2)
    assert recorded(refusing).count(bad) == 1
    listing = await asyncio.to_thread(parked_cli, settings, tmp_path)
    assert "no parked events" in listing.stdout


def seen_at(settings: dict, guid: str) -> tuple:
    conn = sqlite3.connect(str(Path(settings["state_dir"]) / "relay-state.db"))
    try:
        return conn.execute(
            "SELECT outcome, at FROM inbound_seen WHERE guid = ?", (guid,)
        ).fetchone()
    finally:
        conn.close()


@pytest.mark.asyncio
async def test_an_event_always_left_out_is_parked_then_its_chat_flows_in_order(
    settings, backend, messages, quick
):
    async with RunningRelay(settings) as relay:
        await asyncio.sleep(0.2)
        a1 = messages.incoming(CHAT_A, text="a one")
        await wait_for(lambda: a1 in relay.inbound.ledger.seen, 5, "a1")
    stuck = messages.incoming(CHAT_A, text=SECRET)
    a3 = messages.incoming(CHAT_A, text="a three")
    b1 = messages.incoming(CHAT_B, text="b one")
    backend.refuse_guids.add(stuck)
    async with RunningRelay(settings) as relay:
        await wait_for(lambda: b1 in relay.inbound.ledger.seen, 5, "the other chat")
        # a3 goes behind the stuck event each time, and does not count while it waits.
        await wait_for(lambda: recorded(backend).count(stuck) >= 2, 5, "two tries")
        assert a3 not in relay.inbound.ledger.seen
        await wait_for(lambda: parked_rows(settings), 10, "the event to be parked")
        a4 = messages.incoming(CHAT_A, text="a four")
        await wait_for(lambda: a4 in relay.inbound.ledger.seen, 5, "the chat to go on")
        # The settled mark moves on the read after the acknowledgement, not with it.
        a4_rowid = rowid_of(messages, a4)
        await wait_for(lambda: relay.inbound.ledger.settled == a4_rowid, 5, "the mark past a4")

    [row] = parked_rows(settings)
    guid, chat, status, reason, attempts, first, last, _ = row
    assert (guid, chat, status) == (stuck, f"any;-;{CHAT_A}", 200)
    assert reason.startswith(f"left out of accepted {attempts} times over ")
    sent = recorded(backend)
    assert sent.count(stuck) == attempts >= inbound_module.PARK_AFTER
    # Tried every back-off (at most 0.2 s here), yet parked only once PARK_AFTER_S had passed.
    assert last - first >= 1.0 and attempts > inbound_module.PARK_AFTER
    # Each of the chat's events sent behind the stuck one, never ahead of it; a3 counted only
    # once the stuck one was parked, and a4 after a3.
    for batch in backend.inbound_batches:
        chat_a = [event["guid"] for event in batch if event["chat_guid"] == chat]
        assert chat_a in ([stuck, a3], [a3], [a4], [a1])
    assert seen_at(settings, stuck)[0] == "parked"
    assert seen_at(settings, stuck)[1] <= seen_at(settings, a3)[1] <= seen_at(settings, a4)[1]


def state_rows(settings: dict, sql: str) -> List[tuple]:
    conn = sqlite3.connect(str(Path(settings["state_dir"]) / "relay-state.db"))
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


@pytest.mark.asyncio
async def test_restarts_do_not_start_the_left_out_count_again(
    settings, backend, messages, quick, monkeypatch
):
    monkeypatch.setattr(inbound_module, "PARK_AFTER_S", 3.0)
    await stopped_once(settings)
    stuck = messages.incoming(CHAT_A, text=SECRET)
    after = messages.incoming(CHAT_A, text="after it")
    backend.refuse_guids.add(stuck)
    count = "SELECT times FROM inbound_left_out"
    # Each run is stopped after two answers that left the event out, long before it is due.
    for goal in (2, 4):
        async with RunningRelay(settings):
            await wait_for(lambda g=goal: state_rows(settings, count) >= [(g,)], 5, "two more")
        assert not parked_rows(settings)
    await asyncio.sleep(3.0)
    [(before,)] = state_rows(settings, count)
    async with RunningRelay(settings) as relay:
        await wait_for(lambda: after in relay.inbound.ledger.seen, 10, "the chat to go on")

    [row] = parked_rows(settings)
    # Parked at the first answer of the last run: counted over every run, from the first.
    times, over = re.match(r"left out of accepted (\d+) times over (\d+) s", row[3]).groups()
    assert int(times) == before + 1 >= inbound_module.PARK_AFTER and int(over) >= 3
    assert state_rows(settings, "SELECT * FROM inbound_left_out") == []


@pytest.mark.asyncio
@pytest.mark.parametrize("status", [401, 403, 408, 429, 500])
async def test_a_refusal_about_the_shard_or_the_moment_parks_nothing(
    settings, refusing, messages, quick, status
):
    refusing.status = status
    await stopped_once(settings)
    first = messages.incoming(CHAT_A, text="one")
    second = messages.incoming(CHAT_A, text="two")
    other = messages.incoming(CHAT_B, text="other chat")
    refusing.bad.add(first)
    async with RunningRelay(settings) as relay:
        await wait_for(lambda: refusing.tries_of(first) >= 4, 10, "four tries")
        report = relay.report()
        assert report["checks"]["backend_refused"]["parked"] == 0
        assert report["checks"]["backend"]["ok"] is False
        assert f"answered {status}" in report["checks"]["backend"]["detail"]
        # Sent again as a whole, never split: the other events are still unsent.
        for request in refusing.requests:
            assert sorted(request) == sorted([first, second, other])
            assert [g for g in request if g != other] == [first, second]
        refusing.bad.clear()
        await wait_for(lambda: other in relay.inbound.ledger.seen, 10, "the recovery")
        assert relay.report()["checks"]["backend_refused"]["parked"] == 0
    assert parked_rows(settings) == []
    assert sorted(recorded(refusing)) == sorted([first, second, other])
    assert [g for g in recorded(refusing) if g != other] == [first, second]


def pending(guid: str, chat: str, rowid: int) -> Pending:
    event = {"guid": guid, "type": "message", "chat_guid": chat, "text": f"text of {guid}"}
    return Pending(event, rowid, guid, "acked", None)


async def forwarding(backend: BackendDouble, messages: Messages, tmp_path: Path):
    client = Backend(backend.url, TOKEN, 2)
    await client.start()
    store = StateStore(str(tmp_path / "state"))
    return client, Inbound(ChatDB(str(messages.path)), client, store, 1, list)


@pytest.mark.asyncio
async def test_a_refused_batch_is_halved_by_whole_chats_down_to_the_bad_event(
    refusing, messages, tmp_path
):
    a, b, c = "any;-;+15550001111", "any;-;+15550002222", "iMessage;+;chat99"
    batch = [
        pending("a1", a, 1),
        pending("a2", a, 2),
        pending("a3", a, 3),
        pending("b1", b, 4),
        pending("c1", c, 5),
        pending("c2", c, 6),
    ]
    refusing.bad.add("a2")
    client, inbound = await forwarding(refusing, messages, tmp_path)
    for item in batch:
        inbound.queued.add(item.guid)
    try:
        await inbound._forward(batch, [a, b, c])
    finally:
        await client.close()
    assert refusing.requests == [
        ["a1", "a2", "a3", "b1", "c1", "c2"],
        ["a1", "a2", "a3"],  # whole chats, three events each side
        ["a1"],  # one chat: the older half first
        ["a2", "a3"],
        ["a2"],
        ["a3"],
        ["b1", "c1", "c2"],
    ]
    assert set(inbound.ledger.seen) == {"a1", "a2", "a3", "b1", "c1", "c2"}
    assert not inbound.lanes and not inbound.queued and inbound.problem is None
    [(guid, attempts)] = inbound.ledger.conn.execute(
        "SELECT guid, attempts FROM inbound_parked"
    ).fetchall()
    assert (guid, attempts) == ("a2", 4)
    outcome = inbound.ledger.conn.execute(
        "SELECT outcome FROM inbound_seen WHERE guid = 'a2'"
    ).fetchone()
    assert outcome == ("parked",)


class FailingAt(RefusingBackend):
    """Refuses like RefusingBackend, and answers 503 to its `fail_at`-th request."""

    def __init__(self, fail_at: int):
        super().__init__()
        self.fail_at = fail_at

    async def inbound(self, request: web.Request) -> web.Response:
        if len(self.requests) + 1 == self.fail_at:
            self.requests.append([event["guid"] for event in (await request.json())["events"]])
            return web.json_response({"error": "overloaded"}, status=503)
        return await super().inbound(request)


@pytest.mark.asyncio
async def test_a_failure_while_halving_puts_back_what_is_left_in_order(messages, tmp_path):
    backend = FailingAt(3)
    await backend.start()
    a, b = "any;-;+15550001111", "any;-;+15550002222"
    batch = [pending("a1", a, 1), pending("a2", a, 2), pending("b1", b, 3), pending("b2", b, 4)]
    backend.bad.add("a2")
    client, inbound = await forwarding(backend, messages, tmp_path)
    for item in batch:
        inbound.queued.add(item.guid)
    inbound._queue(pending("a3", a, 5), front=False)  # read while the batch was in flight
    try:
        await inbound._forward(batch, [a, b])
    finally:
        await client.close()
        await backend.stop()
    # [a1 a2 b1 b2] refused, [a1 a2] refused, [a1] answered 503: nothing more is sent.
    assert len(backend.requests) == 3
    assert [p.guid for p in inbound.lanes[a]] == ["a1", "a2", "a3"]
    assert [p.guid for p in inbound.lanes[b]] == ["b1", "b2"]
    assert inbound.retry_at > 0 and "answered 503" in inbound.problem
    assert not inbound.ledger.seen
    assert inbound.ledger.conn.execute("SELECT COUNT(*) FROM inbound_parked").fetchone() == (0,)


def test_halves_split_between_whole_chats_nearest_the_middle():
    a = [pending(f"a{n}", "A", n) for n in range(5)]
    b = [pending("b0", "B", 10)]
    c = [pending(f"c{n}", "C", 20 + n) for n in range(4)]
    first, second = halves(a[:3] + b + c)
    assert [p.guid for p in first] == [p.guid for p in a[:3] + b]
    assert [p.guid for p in second] == [p.guid for p in c]
    # A single chat: the older half, then the newer.
    first, second = halves(c)
    assert [p.guid for p in first] == ["c0", "c1"] and [p.guid for p in second] == ["c2", "c3"]
    # One big chat and a small one: still whole chats, never a chat cut in two.
    first, second = halves(a + b)
    assert (len(first), len(second)) == (5, 1)


@pytest.mark.asyncio
async def test_a_parked_edit_is_not_read_again(settings, refusing, messages):
    folder = CORPUS / "edit_history"
    if not folder.is_dir():
        pytest.skip(f"real Messages edit histories not available: {folder} is absent")
    refusing.bad_types.add("edit")
    async with RunningRelay(settings) as relay:
        await asyncio.sleep(0.2)
        guid = messages.incoming(CHAT_A, text="First message  ")
        await wait_for(lambda: guid in recorded(refusing), 5, "the message")
        conn = sqlite3.connect(str(messages.path))
        with conn:
            conn.execute(
                "UPDATE message SET text = 'Edited message', date_edited = 5, "
                "message_summary_info = ? WHERE guid = ?",
                ((folder / "Edited.plist").read_bytes(), guid),
            )
        conn.close()
        await wait_for(lambda: parked_rows(settings), 10, "the edit to be parked")
        [row] = parked_rows(settings)
        tries = refusing.tries_of(row[0])
        await asyncio.sleep(0.5)  # ten polls: the edit dates moved, the state says told
        assert relay.report()["checks"]["backend_refused"]["parked"] == 1
    assert refusing.tries_of(row[0]) == tries == 1
    event = json.loads(row[7])
    assert event["type"] == "edit" and event["message_guid"] == guid


def doctor(settings: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(settings))
    return subprocess.run(
        [sys.executable, "-m", "edge_relay", "doctor", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.asyncio
async def test_doctor_reports_parked_events_and_how_to_retry_them(
    settings, refusing, messages, tmp_path
):
    await stopped_once(settings)
    bad = messages.incoming(CHAT_A, text=SECRET)
    refusing.bad.add(bad)
    async with RunningRelay(settings):
        await wait_for(lambda: parked_rows(settings), 10, "the event to be parked")
    result = await asyncio.to_thread(doctor, settings, tmp_path)
    assert result.returncode == 0, result.stdout  # a warning: the shard works
    [line] = [line for line in result.stdout.splitlines() if "parked events" in line]
    assert line.startswith("warn  parked events: 1 inbound event(s)")
    assert f"oldest {bad}" in line
    assert f"edge-relay parked --config {tmp_path / 'config.yml'} --retry" in line
    assert SECRET not in result.stdout


def test_parked_without_state_or_with_a_bad_config_says_so(settings, tmp_path):
    listing = parked_cli(settings, tmp_path)
    assert listing.returncode == 0
    assert "no parked events: the relay has kept no state" in listing.stdout
    retry = parked_cli(settings, tmp_path, "--retry", "SOME-GUID")
    assert retry.returncode == 1 and "no parked event has guid SOME-GUID" in retry.stderr
    assert not Path(settings["state_dir"]).exists()  # looking created nothing
    settings["shard_id"] = "nope"
    bad = parked_cli(settings, tmp_path)
    assert bad.returncode == 2 and "shard_id" in bad.stderr
