"""kill -9 in the middle of 1,000 sends, alone and while 1,000 messages arrive: after a
restart none is lost, none sent or forwarded twice, and an interrupted send is uncertain.

They take about a minute each, so they run only when EDGE_RELAY_SLOW_TESTS=1 is set (-s shows
the figures of the combined run):
    EDGE_RELAY_SLOW_TESTS=1 .venv/bin/python -m pytest -s tests/relay/test_lifecycle_crash.py
"""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import aiohttp
import pytest
import yaml
from relay_support import wait_for

pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.skipif(
        os.environ.get("EDGE_RELAY_SLOW_TESTS") != "1",
        reason="about a minute long: set EDGE_RELAY_SLOW_TESTS=1 to run it",
    ),
]

COMMANDS = 1000
INBOUND = 1000
CHATS = 10

# A quick osascript double (sh and the sqlite3 shell, a few ms a call): it records each call,
# then writes the row Messages writes. What was sent is what chat.db holds; a call whose
# write failed (the database busy) failed before anything was sent, and may be retried.
FAST_OSASCRIPT = """#!/bin/sh
printf '%s\\n' "$5" >> "{calls}"
sqlite3 -cmd ".timeout 2000" "{chat_db}" "INSERT INTO message (guid, text, handle_id, service,
  date, is_from_me, is_sent, is_delivered)
  SELECT lower(hex(randomblob(16))), '$5', h.ROWID, 'iMessage', 0, 1, 1, 1 FROM handle h
  WHERE h.id = (SELECT chat_identifier FROM chat WHERE guid = '$3');
  INSERT INTO chat_message_join (chat_id, message_id)
  SELECT ROWID, last_insert_rowid() FROM chat WHERE guid = '$3';"
"""


def start(settings: dict, tmp_path) -> subprocess.Popen:
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(settings))
    # The log goes to a file, as launchd sends it: a pipe nobody reads would fill and block.
    with open(tmp_path / "relay.log", "a") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "edge_relay", "run", "--config", str(path)],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )


def sent(calls) -> list:
    return calls.read_text().split() if calls.exists() else []


def fast_sends(settings: dict, messages, tmp_path, backend, chats: list) -> Path:
    """Points the relay at the quick osascript double, with room for every command queued."""
    if subprocess.run(["which", "sqlite3"], capture_output=True).returncode:
        pytest.skip("the sqlite3 shell is needed for the quick osascript double")
    calls = tmp_path / "sends.txt"
    fake = tmp_path / "fast-osascript"
    fake.write_text(FAST_OSASCRIPT.format(calls=calls, chat_db=messages.path))
    fake.chmod(0o755)
    settings["osascript"] = str(fake)
    settings["rate_limit"] = {
        "per_minute": 100000,
        "per_recipient_per_minute": 100000,
        "first_contact_per_hour": 100000,
    }
    settings["send_queue"].update(max_depth=COMMANDS, expiry_s=600)
    for n in range(COMMANDS):
        backend.queue_command(
            {"id": f"c{n}", "type": "send", "chat_guid": chats[n % CHATS], "bubbles": [f"m{n}"]}
        )
    return calls


async def test_kill_9_mid_queue_loses_nothing_and_sends_nothing_twice(
    settings, backend, messages, tmp_path
):
    handles = [f"+1555000{n:04d}" for n in range(CHATS)]
    chats = [messages.chat(handle) for handle in handles]
    calls = fast_sends(settings, messages, tmp_path, backend, chats)

    proc = start(settings, tmp_path)
    try:
        await wait_for(lambda: len(sent(calls)) >= COMMANDS // 4, 60, "a quarter of the sends")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=5)
    before_restart = len(sent(calls))
    assert before_restart < COMMANDS, "the kill came too late to test anything"

    proc = start(settings, tmp_path)
    started = time.monotonic()
    try:
        await wait_for(lambda: len(backend.results) == COMMANDS, 90, "every command's result")
        await asyncio.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    assert proc.returncode == 0, (tmp_path / "relay.log").read_text()[-2000:]

    rows = messages.rows("SELECT text FROM message WHERE is_from_me = 1")
    counts = collections.Counter(text for (text,) in rows)
    assert [text for text, count in counts.items() if count > 1] == []  # none sent twice
    statuses = collections.Counter(r["status"] for r in backend.results.values())
    assert set(statuses) <= {"delivered", "uncertain"}
    # At most the one send under way at the kill is uncertain, and it was not sent again.
    assert statuses["uncertain"] <= 1
    for command_id, result in backend.results.items():
        text = "m" + command_id[1:]
        expected = {0, 1} if result["status"] == "uncertain" else {1}
        assert counts[text] in expected, (command_id, result)
        if result["status"] == "uncertain":
            assert sent(calls).count(text) == 1
    assert time.monotonic() - started < 90


class Incoming:
    """Messages arriving at a steady pace from a thread, over the same chats the sends go to."""

    def __init__(self, messages, handles: list, count: int, per_second: float):
        self.messages = messages
        self.handles = handles
        self.count = count
        self.interval = 1.0 / per_second
        self.written: list = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="incoming", daemon=True)

    def _run(self) -> None:
        started = time.monotonic()
        for n in range(self.count):
            if self.stop.is_set():
                return
            handle = self.handles[n % len(self.handles)]
            self.written.append((handle, self.messages.incoming(handle, text=f"in {n}")))
            self.stop.wait(max(0.0, started + (n + 1) * self.interval - time.monotonic()))


async def health(settings: dict) -> dict:
    url = f"http://127.0.0.1:{settings['health']['port']}/health"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return await response.json()


async def test_kill_9_mid_inbound_and_outbound_loses_nothing_and_does_nothing_twice(
    settings, backend, messages, tmp_path
):
    # Messages keeps chat.db in WAL mode; the sends, the arrivals and the relay share it.
    with sqlite3.connect(str(messages.path)) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
    handles = [f"+1555000{n:04d}" for n in range(CHATS)]
    chats = [messages.chat(handle) for handle in handles]
    calls = fast_sends(settings, messages, tmp_path, backend, chats)
    incoming = Incoming(messages, handles, INBOUND, per_second=40)

    def forwarded() -> set:
        return {event["guid"] for event in backend.events()}

    proc = start(settings, tmp_path)
    try:
        # History before the first start is not news: arrivals begin once it has started.
        await wait_for(lambda: backend.registrations, 20, "the relay to register")
        await asyncio.sleep(0.5)
        incoming.thread.start()
        await wait_for(
            lambda: len(sent(calls)) >= COMMANDS // 4 and len(forwarded()) >= INBOUND // 4,
            60,
            "a quarter of the sends and of the arrivals",
        )
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        batches_at_kill = len(backend.inbound_batches)
        written_at_kill = len(incoming.written)
        sent_at_kill = len(sent(calls))
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=5)
    assert sent_at_kill < COMMANDS and written_at_kill < INBOUND, "the kill came too late"
    forwarded_before = {
        e["guid"] for batch in backend.inbound_batches[:batches_at_kill] for e in batch
    }

    proc = start(settings, tmp_path)
    try:
        await wait_for(lambda: len(backend.results) == COMMANDS, 120, "every command's result")
        await asyncio.to_thread(incoming.thread.join, 60)
        written = list(incoming.written)
        await wait_for(
            lambda: {guid for _, guid in written} <= forwarded(), 60, "every arrival forwarded"
        )
        await asyncio.sleep(0.3)
        figures = (await health(settings))["send_queue"]
    finally:
        incoming.stop.set()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    assert proc.returncode == 0, (tmp_path / "relay.log").read_text()[-2000:]

    # Inbound: each arrival forwarded; again only if it was in a batch answered before the kill
    # (the relay died before recording the answer), never one forwarded after the restart.
    events = collections.Counter(event["guid"] for event in backend.events())
    inbound_lost = [guid for _, guid in written if guid not in events]
    forwarded_twice = [guid for guid, count in events.items() if count > 1]
    assert inbound_lost == []
    assert set(forwarded_twice) <= forwarded_before
    first_seen: dict = {}
    for event in backend.events():
        first_seen.setdefault(event["chat_guid"], [])
        if event["guid"] not in first_seen[event["chat_guid"]]:
            first_seen[event["chat_guid"]].append(event["guid"])
    by_chat: dict = {}
    for handle, guid in written:
        by_chat.setdefault(f"any;-;{handle}", []).append(guid)
    assert first_seen == by_chat  # each chat's arrivals reached the backend in Messages' order

    # Outbound: a result for every command, nothing sent twice, the uncertain ones counted.
    rows = messages.rows("SELECT text FROM message WHERE is_from_me = 1")
    counts = collections.Counter(text for (text,) in rows)
    sent_twice = [text for text, count in counts.items() if count > 1]
    statuses = collections.Counter(r["status"] for r in backend.results.values())
    outbound_lost = [
        command_id
        for command_id, result in backend.results.items()
        if result["status"] == "delivered" and counts["m" + command_id[1:]] != 1
    ]
    assert sent_twice == [] and outbound_lost == []
    assert set(statuses) <= {"delivered", "uncertain"}
    assert statuses["uncertain"] <= 1  # at most the send under way at the kill
    assert figures["totalUncertain"] == statuses["uncertain"]
    assert figures["totalDelivered"] == statuses["delivered"]
    print(
        f"\nkill -9 after {written_at_kill} of {INBOUND} arrivals ({len(forwarded_before)}"
        f" forwarded) and {sent_at_kill} of {COMMANDS} sends: inbound {len(inbound_lost)} lost,"
        f" {len(forwarded_twice)} forwarded twice (all answered before the kill, the backend"
        f" takes a guid once); outbound {len(outbound_lost)} lost, {len(sent_twice)} sent twice,"
        f" {statuses['uncertain']} uncertain (counted {figures['totalUncertain']},"
        f" reported {statuses['uncertain']}), {statuses['delivered']} delivered"
    )
