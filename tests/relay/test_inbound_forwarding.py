"""The relay's inbound side end to end: watching, exactly once, order per chat, outages."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from aiohttp import web
from edge_relay.backend import Backend
from edge_relay.chatdb import ChatDB
from edge_relay.inbound import Inbound, Pending
from edge_relay.state import StateStore
from relay_support import CORPUS, TOKEN, BackendDouble, Messages, RunningRelay, wait_for

pytestmark = pytest.mark.asyncio

HANDLE = "+15550001111"


def wal_mode(messages: Messages) -> None:
    """chat.db as Messages keeps it: write-ahead log."""
    conn = sqlite3.connect(str(messages.path))
    conn.execute("PRAGMA journal_mode = WAL")
    conn.close()


def write(path: Path, sql: str, params: tuple = ()) -> None:
    conn = sqlite3.connect(str(path))
    try:
        with conn:
            conn.execute(sql, params)
    finally:
        conn.close()


def guids(backend: BackendDouble, kind: str = "message") -> list:
    return [e["guid"] for e in backend.events() if e["type"] == kind]


async def noticed_within(backend: BackendDouble, guid: str, seconds: float) -> None:
    await wait_for(lambda: guid in guids(backend), seconds, f"message {guid} to be noticed")


async def test_a_replaced_or_truncated_wal_does_not_deafen_the_relay(settings, backend, messages):
    wal_mode(messages)
    settings["poll_interval_s"] = 30  # only the folder watch can notice in time
    async with RunningRelay(settings) as relay:
        await wait_for(lambda: relay.watcher.problem is None, what="the folder watch")
        await asyncio.sleep(0.2)
        first = messages.incoming(HANDLE, text="before")
        await noticed_within(backend, first, 2)

        # Messages replaces the WAL: a new file (new inode) under the same name.
        write(messages.path, "PRAGMA wal_checkpoint(TRUNCATE)")
        wal = Path(str(messages.path) + "-wal")
        old_inode = wal.stat().st_ino if wal.exists() else None
        fresh = wal.with_name("chat.db-wal.new")
        fresh.write_bytes(b"")
        os.replace(fresh, wal)
        assert wal.stat().st_ino != old_inode
        replaced = messages.incoming(HANDLE, text="after the new WAL")
        await noticed_within(backend, replaced, 2)

        # Messages keeps its connection open, so the WAL stays; a checkpoint truncates it.
        keeper = sqlite3.connect(str(messages.path))
        try:
            keeper.execute("INSERT INTO handle (id, service) VALUES ('+15550009998', 'SMS')")
            keeper.commit()
            keeper.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            assert wal.stat().st_size == 0
            truncated = messages.incoming(HANDLE, text="after the checkpoint")
            await noticed_within(backend, truncated, 2)
        finally:
            keeper.close()
    assert guids(backend) == [first, replaced, truncated]


async def test_a_late_row_below_handled_ones_is_forwarded_once(settings, backend, messages):
    async with RunningRelay(settings):
        await asyncio.sleep(0.2)
        first = messages.incoming(HANDLE, text="one")
        # A gap is left: the next row takes a ROWID well above the last.
        write(messages.path, "UPDATE sqlite_sequence SET seq = seq + 10 WHERE name = 'message'")
        second = messages.incoming(HANDLE, text="two")
        await wait_for(lambda: len(guids(backend)) == 2, what="two messages")
        # iCloud sync fills the gap later, with a smaller ROWID and an old date.
        [(low,)] = messages.rows("SELECT ROWID FROM message WHERE guid = ?", (first,))
        write(
            messages.path,
            "INSERT INTO message (ROWID, guid, text, handle_id, service, date, is_from_me) "
            "SELECT ?, 'LATE-SYNC-1', 'synced late', handle_id, service, 1, 0 "
            "FROM message WHERE guid = ?",
            (low + 3, first),
        )
        messages.join("LATE-SYNC-1", f"any;-;{HANDLE}")
        await wait_for(lambda: "LATE-SYNC-1" in guids(backend), what="the late row")
        await asyncio.sleep(0.3)
    assert sorted(guids(backend)) == sorted([first, second, "LATE-SYNC-1"])

    backend.inbound_batches.clear()
    async with RunningRelay(settings):
        await asyncio.sleep(0.5)
    assert backend.events() == []  # everything acknowledged stays handled after a restart


async def test_edits_and_unsends_arrive_once_as_their_own_events(settings, backend, messages):
    folder = CORPUS / "edit_history"
    if not folder.is_dir():
        pytest.skip(f"real Messages edit histories not available: {folder} is absent")
    async with RunningRelay(settings):
        await asyncio.sleep(0.2)
        guid = messages.incoming(HANDLE, text="First message  ")
        await wait_for(lambda: guid in guids(backend), what="the message")
        write(
            messages.path,
            "UPDATE message SET text = 'Edited message', date_edited = 5, "
            "message_summary_info = ? WHERE guid = ?",
            ((folder / "Edited.plist").read_bytes(), guid),
        )
        await wait_for(lambda: guids(backend, "edit"), what="the edit")
        write(
            messages.path,
            "UPDATE message SET text = NULL, date_retracted = 6, message_summary_info = ? "
            "WHERE guid = ?",
            ((folder / "Deleted.plist").read_bytes(), guid),
        )
        await wait_for(lambda: guids(backend, "unsend"), what="the unsend")
        await asyncio.sleep(0.3)
    [edit] = [e for e in backend.events() if e["type"] == "edit"]
    assert edit["message_guid"] == guid
    assert [h["text"] for h in edit["parts"][0]["history"]][-1] == "Edited message"
    [unsend] = [e for e in backend.events() if e["type"] == "unsend"]
    assert unsend["parts"] == [0]

    backend.inbound_batches.clear()
    async with RunningRelay(settings):
        await asyncio.sleep(0.5)
    assert backend.events() == []  # the edit and unsend were acknowledged: not sent again


class SlowBackend(BackendDouble):
    """Answers inbound batches after a delay, counting how many are in flight at once."""

    def __init__(self, delay_s: float):
        super().__init__()
        self.delay_s = delay_s
        self.in_flight = 0
        self.most_in_flight = 0

    async def inbound(self, request: web.Request) -> web.Response:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay_s)
            return await super().inbound(request)
        finally:
            self.in_flight -= 1


async def test_three_batches_in_flight_and_each_chat_in_order(settings, messages):
    backend = SlowBackend(0.2)
    await backend.start()
    settings["backend"]["url"] = backend.url
    try:
        async with RunningRelay(settings) as relay:
            await asyncio.sleep(0.2)
            sent = {}
            # A backlog over many chats, written while the first batches are in flight.
            for n in range(240):
                handle = f"+1555000{n % 12:04d}"
                sent.setdefault(f"any;-;{handle}", []).append(
                    messages.incoming(handle, text=f"m{n}")
                )
                if n % 20 == 0:
                    relay.wake_inbound()
            await wait_for(lambda: len(backend.events()) >= 240, 20, what="the backlog")
    finally:
        await backend.stop()
    assert backend.most_in_flight == 3
    by_chat = {}
    for event in backend.events():
        by_chat.setdefault(event["chat_guid"], []).append(event["guid"])
    assert by_chat == sent  # each chat's messages in the order Messages wrote them, once each


class FailingBackend(BackendDouble):
    """Answers inbound with `self.fault` while it is set: 503, malformed JSON, or a stall."""

    def __init__(self):
        super().__init__()
        self.fault = None
        self.failed_calls = 0

    async def inbound(self, request: web.Request) -> web.Response:
        if self.fault is not None:
            self.failed_calls += 1
            if self.fault == "503":
                return web.json_response({"error": "overloaded"}, status=503)
            if self.fault == "malformed":
                return web.Response(text="{not json", content_type="application/json")
            if self.fault == "stall":
                await asyncio.sleep(5)
        return await super().inbound(request)


@pytest.mark.parametrize(
    "fault, detail",
    [("503", "answered 503"), ("malformed", "failed"), ("stall", "timed out")],
)
async def test_a_failing_backend_is_retried_with_backoff_and_loses_nothing(
    settings, messages, fault, detail
):
    backend = FailingBackend()
    await backend.start()
    settings["backend"]["url"] = backend.url
    settings["backend"]["timeout_s"] = 0.5
    try:
        async with RunningRelay(settings) as relay:
            await asyncio.sleep(0.2)
            backend.fault = fault
            sent = [messages.incoming(HANDLE, text=f"during {n}") for n in range(5)]
            await wait_for(lambda: backend.failed_calls >= 2, 10, what="two failed attempts")
            health = relay.report()["checks"]["backend"]
            assert health["ok"] is False and detail in health["detail"]
            # Back-off: a handful of attempts, not a storm.
            calls_then = backend.failed_calls
            await asyncio.sleep(1.0)
            assert backend.failed_calls - calls_then <= 3
            backend.fault = None
            await wait_for(lambda: set(sent) <= set(guids(backend)), 40, what="the resend")
            await wait_for(lambda: relay.report()["checks"]["backend"]["ok"], what="health")
    finally:
        await backend.stop()
    assert guids(backend) == sent


async def test_the_poll_still_reads_when_the_folder_cannot_be_watched(settings, backend, messages):
    from edge_relay import watcher

    started = time.monotonic()
    settings["poll_interval_s"] = 0.3
    original = watcher.Observer.start

    def refuse(self):
        raise OSError(28, "inotify watch limit reached")

    watcher.Observer.start = refuse
    try:
        async with RunningRelay(settings) as relay:
            await asyncio.sleep(0.2)
            assert "cannot watch" in relay.watcher.problem
            guid = messages.incoming(HANDLE, text="polled")
            await noticed_within(backend, guid, 3)
    finally:
        watcher.Observer.start = original
    assert time.monotonic() - started < 10


def pending(guid: str, chat: str, rowid: int) -> Pending:
    event = {"guid": guid, "type": "message", "chat_guid": chat, "text": None}
    return Pending(event, rowid, guid, "acked", None)


async def test_a_chat_settles_only_up_to_its_first_unaccepted_event(backend, messages, tmp_path):
    chat_a, chat_b = "any;-;+15550001111", "iMessage;+;chat123456"
    client = Backend(backend.url, TOKEN, 2)
    await client.start()
    inbound = Inbound(ChatDB(str(messages.path)), client, StateStore(str(tmp_path / "s")), 1, list)
    batch = [
        pending("a1", chat_a, 1),
        pending("b1", chat_b, 2),
        pending("a2", chat_a, 3),
        pending("a3", chat_a, 4),
        pending("b2", chat_b, 5),
    ]
    for item in batch:
        inbound.queued.add(item.event["guid"])
    # Read while the batch was in flight: it waits behind the events put back.
    inbound._queue(pending("a4", chat_a, 6), front=False)
    backend.refuse_guids.add("a2")
    try:
        await inbound._forward(batch, [chat_a, chat_b])

        # a3 was accepted, but a2 before it was not: only a1 counts for chat A.
        assert set(inbound.ledger.seen) == {"a1", "b1", "b2"}
        assert [p.event["guid"] for p in inbound.lanes[chat_a]] == ["a2", "a3", "a4"]
        assert chat_b not in inbound.lanes
        assert inbound.queued == {"a2", "a3", "a4"}
        assert inbound.problem == "the backend left 1 event(s) unaccepted"

        backend.refuse_guids.clear()
        inbound.retry_at = 0.0
        inbound._dispatch()
        await asyncio.gather(*inbound.requests)
    finally:
        await client.close()
    assert [e["guid"] for e in backend.inbound_batches[-1]] == ["a2", "a3", "a4"]
    assert set(inbound.ledger.seen) == {"a1", "b1", "b2", "a2", "a3", "a4"}
    assert not inbound.lanes and not inbound.queued and inbound.problem is None


def count_scans(chat_db: ChatDB) -> list:
    """The times of the relay's reads of chat.db (each read starts with one scan)."""
    times: list = []
    scan = chat_db.scan

    def counted(above: int):
        times.append(time.monotonic())
        return scan(above)

    chat_db.scan = counted
    return times


async def test_an_idle_relay_stays_idle_when_nothing_else_holds_chat_db(
    settings, backend, messages
):
    wal_mode(messages)
    settings["poll_interval_s"] = 30  # only what the folder watch reports wakes a read
    async with RunningRelay(settings) as relay:
        await wait_for(lambda: relay.watcher.problem is None, what="the folder watch")
        reads = count_scans(relay.chat_db)
        # Messages writes and closes its connection: no other connection holds chat.db.
        first = messages.incoming(HANDLE, text="before the quiet")
        await noticed_within(backend, first, 2)
        await asyncio.sleep(0.5)
        quiet_from = len(reads)
        await asyncio.sleep(3.0)
        quiet = len(reads) - quiet_from
        later = messages.incoming(HANDLE, text="after the quiet")
        await noticed_within(backend, later, 2)
    assert quiet <= 2, f"{quiet} reads in 3 s with nothing arriving"
    assert guids(backend) == [first, later]


@contextlib.asynccontextmanager
async def watching(messages, wake):
    """A folder watch on chat.db, started and settled, with Messages holding the database open
    (so the WAL stays); yields Messages' connection."""
    from edge_relay.watcher import FolderWatcher

    wal_mode(messages)
    watch = FolderWatcher(str(messages.path), wake)
    keeper = sqlite3.connect(str(messages.path))
    keeper.execute("SELECT COUNT(*) FROM message").fetchone()
    task = asyncio.ensure_future(watch.run())
    try:
        await wait_for(lambda: watch.problem is None, what="the folder watch")
        await asyncio.sleep(0.3)
        yield keeper
    finally:
        keeper.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_the_watch_wakes_on_changes_to_the_files_not_on_their_attributes(messages):
    wal = Path(str(messages.path) + "-wal")
    wakes: list = []
    async with watching(messages, lambda: wakes.append(time.monotonic())) as keeper:
        wakes.clear()
        # What a connection opened as root does to the WAL, and a mode changed by hand.
        for path in (wal, messages.path):
            os.chown(path, os.getuid(), os.getgid())
            os.chmod(path, 0o640)
        await asyncio.sleep(0.5)
        assert wakes == []

        messages.incoming(HANDLE, text="written")
        await wait_for(lambda: wakes, what="a wake for the write")
        await asyncio.sleep(0.3)
        wakes.clear()
        keeper.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        fresh = wal.with_name("chat.db-wal.new")
        fresh.write_bytes(b"")
        os.replace(fresh, wal)
        await wait_for(lambda: wakes, what="a wake for the replaced WAL")


async def test_opening_chat_db_does_not_reach_the_watch(messages, monkeypatch):
    from edge_relay import watcher

    seen: list = []
    original = watcher._Handler.on_any_event
    monkeypatch.setattr(
        watcher._Handler,
        "on_any_event",
        lambda self, event: (seen.append(event), original(self, event)),
    )
    async with watching(messages, lambda: None):
        seen.clear()
        # Readers opening and closing the files, as Messages' own helpers and the lab do. In
        # another process: a close in this one would drop the keeper's locks on chat.db.
        reads = (
            "import sys\n"
            "for _ in range(50):\n"
            "    for path in sys.argv[1:]:\n"
            "        with open(path, 'rb') as handle:\n"
            "            handle.read(16)\n"
        )
        files = [str(messages.path), str(messages.path) + "-wal"]
        subprocess.run([sys.executable, "-c", reads, *files], check=True, timeout=30)
        await asyncio.sleep(0.5)
        assert seen == []
