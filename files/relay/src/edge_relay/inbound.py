"""Inbound: rows of chat.db become events the backend acknowledged, each exactly once.

How the relay knows what it has handled (the cursor)
----------------------------------------------------
Three things live in the relay's state database, each change committed before it counts:

- the settled mark (`meta.cursor`): a ROWID at or below which every row of `message` has
  been handled, that is acknowledged by the backend or deliberately passed over;
- `inbound_seen`: the guid of every row handled in a look-back window of LOOKBACK_ROWS
  ROWIDs below the settled mark, with its outcome (`acked`, `skipped`, `history`);
- `inbound_revisions`: for each message forwarded, the edit and unsend state already told to
  the backend (edit history length per part, parts unsent, `date_edited`, `date_retracted`).

Each read scans ROWID, guid and the two edit dates of every row above the settled mark minus
the look-back (a quick index walk), and reads in full only the rows whose guid is not in
`inbound_seen` and the forwarded messages whose edit dates moved. So a row that appears with
a ROWID below rows already handled (a gap filled, a late iCloud sync) is still found, and a
row with an old `date` is forwarded like any other: dates decide nothing. A row counts as
handled only once the backend listed its guid in `accepted`; until then it stays unsettled
and is read and sent again after a restart (the backend takes a guid once, however often it
comes). The settled mark moves over the longest run of handled rows, so during an outage
nothing is skipped however many rows pile up.

On the very first start every row then present in the window is recorded as `history` and
the settled mark set to the newest row: an account that has just signed in syncs its whole
history, which is not news. A relay that kept only the settled mark (an older release)
records its window the same way, so an upgrade forwards nothing twice.

Forwarding: events wait in one lane per chat; a batch takes whole lanes (in order) up to
BATCH_EVENTS events; at most MAX_IN_FLIGHT requests run at once and a chat with a batch in
flight is not in another, so the messages of one chat are never reordered. A failed request
(unreachable, 5xx, timeout, malformed answer) puts its events back at the front of their
lanes and holds all sending for an exponential back-off with jitter.

An answer that leaves some events out of `accepted` settles, per chat, only the run of events
before the first one left out: that one and every later event of its chat go back to the front
of the chat's lane, in order, and are sent again after the back-off, accepted ones included
(the backend takes a guid once). So a chat's later message never counts as handled while an
earlier one waits, and what the relay sends for a chat always follows Messages' order.

Events the backend will not take (parking)
------------------------------------------
The backend checks a batch as a whole: one event it cannot take (a shape it does not know yet,
say) refuses the batch. A batch answered with a 4xx other than 401, 403, 408 and 429 (those
are about the shard or the moment, and are retried as above) is sent again in two halves, by
whole chats when it holds several (else the older half of its one chat first), each half on
its own and in turn, down to single events; a single event refused so is parked at once. An
event left out of `accepted` PARK_AFTER times, over at least PARK_AFTER_S since it was first
left out, is parked too, but only when no earlier event of its chat still waits. How often
and since when an event was left out is kept in `inbound_left_out`, so a relay restarted
again and again still parks the event, and its chat goes on.

A parked event is kept whole in `inbound_parked` (parked.py) with the backend's status and
reason, and, in the same transaction, counted as handled: its row is recorded in
`inbound_seen` with the outcome `parked` (an edit or unsend brings its message's revision
state up to date), so the settled mark moves past it and its chat goes on. `edge-relay parked
--retry` marks parked events; each pass takes the marked ones back into their chats' lanes,
behind what waits there, for one more try: accepted, the event leaves the table (in the same
transaction that records it handled); refused or left out again, it is parked again at once.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import random
import sqlite3
import time
from typing import Any, Callable, Deque, Dict, Iterator, List, Optional, Set, Tuple

from edge_relay import parked
from edge_relay.backend import Backend, BackendError
from edge_relay.chatdb import (
    ChatDB,
    ChatDBError,
    MessageRow,
    RowMark,
    is_unsent_whole,
    revision_events,
    revision_of,
    row_event,
)
from edge_relay.state import StateStore

log = logging.getLogger("edge_relay.inbound")

LOOKBACK_ROWS = 2000
BATCH_EVENTS = 100
MAX_IN_FLIGHT = 3
# New rows read in full per pass; the rest wait for the next pass, so a large backlog is
# taken in steps while the first batches are already on their way.
READ_ROWS = 500
INCOMPLETE_WAIT_S = 5.0
FOLLOW_UP_S = 0.05
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
# An event left out of `accepted` this many times, and over at least this long, is parked: a
# backend catching up after an incident gets minutes, not a few quick back-offs.
PARK_AFTER = 5
PARK_AFTER_S = 180.0
# The status kept for an event parked after answers that left it out (the backend said 2xx).
LEFT_OUT_STATUS = 200
# A text shorter than this is not cut out of a backend's reason: short words are too common to
# tell apart from the backend's own.
TEXT_MIN_CHARS = 4

LEDGER_SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS inbound_seen (
    guid TEXT PRIMARY KEY, rowid INTEGER NOT NULL, outcome TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS inbound_seen_rowid ON inbound_seen (rowid);
CREATE TABLE IF NOT EXISTS inbound_revisions (
    guid TEXT PRIMARY KEY, rowid INTEGER NOT NULL, state TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS inbound_left_out (
    guid TEXT PRIMARY KEY, rowid INTEGER NOT NULL, times INTEGER NOT NULL, since REAL NOT NULL);
"""
    + parked.PARKED_SCHEMA
)


class InboundLedger:
    """The durable record of what was handled: settled mark, seen guids, revision states."""

    def __init__(self, store: StateStore):
        self.store = store
        self.conn: sqlite3.Connection = store.conn
        self.conn.executescript(LEDGER_SCHEMA)
        self.seen: Dict[str, int] = {}
        self.revisions: Dict[str, Dict[str, Any]] = {}
        # Event guid -> (answers that left it out, Unix time of the first): few, all loaded.
        self.left_out: Dict[str, Tuple[int, float]] = {
            guid: (times, since)
            for guid, times, since in self.conn.execute(
                "SELECT guid, times, since FROM inbound_left_out"
            )
        }
        settled = self.settled
        if settled is not None:
            floor = settled - LOOKBACK_ROWS
            sql = "SELECT guid, rowid FROM inbound_seen WHERE rowid > ?"
            self.seen = dict(self.conn.execute(sql, (floor,)).fetchall())
            sql = "SELECT guid, state FROM inbound_revisions WHERE rowid > ?"
            self.revisions = {g: json.loads(s) for g, s in self.conn.execute(sql, (floor,))}

    @property
    def settled(self) -> Optional[int]:
        return self.store.cursor()

    @property
    def initialised(self) -> bool:
        row = self.conn.execute("SELECT 1 FROM meta WHERE key = 'inbound_ledger'").fetchone()
        return row is not None

    def start_from(self, marks: List[RowMark], settled: int) -> None:
        """Records every row at or below `settled` as history: the relay starts after them."""
        now = time.time()
        history = [(m.guid, m.rowid, "history", now) for m in marks if m.rowid <= settled]
        with self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.executemany(
                "INSERT OR IGNORE INTO inbound_seen (guid, rowid, outcome, at) VALUES (?, ?, ?, ?)",
                history,
            )
            self.conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('cursor', ?)", (str(settled),)
            )
            self.conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('inbound_ledger', '1')"
            )
        self.seen.update((guid, rowid) for guid, rowid, _, _ in history)

    def handled(
        self,
        rows: List[tuple],
        revisions: Optional[List[tuple]] = None,
        unparked: Optional[List[str]] = None,
        accepted: Optional[List[str]] = None,
    ) -> None:
        """Records (guid, rowid, outcome) rows and (guid, rowid, state) revisions at once.

        `unparked`: guids of parked events the backend has now accepted, taken off the table.
        `accepted`: guids of events the backend took, whose left-out count is forgotten.
        """
        now = time.time()
        with self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.executemany(
                "INSERT OR REPLACE INTO inbound_seen (guid, rowid, outcome, at) "
                "VALUES (?, ?, ?, ?)",
                [(guid, rowid, outcome, now) for guid, rowid, outcome in rows],
            )
            self.conn.executemany(
                "INSERT OR REPLACE INTO inbound_revisions (guid, rowid, state) VALUES (?, ?, ?)",
                [(guid, rowid, json.dumps(state)) for guid, rowid, state in revisions or []],
            )
            self.conn.executemany(
                "DELETE FROM inbound_parked WHERE guid = ?", [(guid,) for guid in unparked or []]
            )
            forgotten = [(guid,) for guid in accepted or [] if guid in self.left_out]
            self.conn.executemany("DELETE FROM inbound_left_out WHERE guid = ?", forgotten)
        for (guid,) in forgotten:
            del self.left_out[guid]
        for guid, rowid, _ in rows:
            self.seen[guid] = rowid
        for guid, _, state in revisions or []:
            self.revisions[guid] = state

    def settle(self, rowid: int) -> None:
        """Moves the settled mark and forgets what fell out of the look-back window."""
        floor = rowid - LOOKBACK_ROWS
        with self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('cursor', ?)", (str(rowid),)
            )
            self.conn.execute("DELETE FROM inbound_seen WHERE rowid <= ?", (floor,))
            self.conn.execute("DELETE FROM inbound_revisions WHERE rowid <= ?", (floor,))
            self.conn.execute("DELETE FROM inbound_left_out WHERE rowid <= ?", (floor,))
        if self.left_out:
            kept = {g for (g,) in self.conn.execute("SELECT guid FROM inbound_left_out")}
            self.left_out = {g: v for g, v in self.left_out.items() if g in kept}
        self.seen = {g: r for g, r in self.seen.items() if r > floor}
        self.revisions = {g: s for g, s in self.revisions.items() if self.seen.get(g, 0) > floor}

    def left_out_again(self, left_out: List[Pending], now: float) -> None:
        """Counts one more answer that left each of these events out, for good."""
        for pending in left_out:
            times, since = self.left_out.get(pending.guid, (0, now))
            self.left_out[pending.guid] = (times + 1, since)
            pending.left_out, pending.left_out_since = times + 1, since
        with self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.executemany(
                "INSERT OR REPLACE INTO inbound_left_out (guid, rowid, times, since) "
                "VALUES (?, ?, ?, ?)",
                [(p.guid, p.rowid, p.left_out, p.left_out_since) for p in left_out],
            )

    def revised(self, pending: Pending) -> Dict[str, Any]:
        """The revision state of the event's message once the event is told."""
        state = dict(self.revisions.get(pending.row_guid) or {})
        state.update(pending.revision or {})
        return state

    def park(self, pending: Pending, status: int, reason: str) -> None:
        """Keeps the event in `inbound_parked` and counts it as handled, in one transaction.

        Parked again (after a retry), it keeps its first attempt and adds up its attempts.
        """
        now = time.time()
        event = pending.event
        state = self.revised(pending) if pending.revision is not None else None
        with self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.execute(
                "INSERT INTO inbound_parked (guid, chat_guid, event, row_guid, rowid, outcome, "
                "status, reason, first_attempt_at, last_attempt_at, attempts, parked_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(guid) DO UPDATE SET "
                "status = excluded.status, reason = excluded.reason, "
                "last_attempt_at = excluded.last_attempt_at, "
                "attempts = attempts + excluded.attempts, parked_at = excluded.parked_at, "
                "retry = 0",
                (
                    str(event["guid"]),
                    str(event["chat_guid"]),
                    json.dumps(event),
                    pending.row_guid,
                    pending.rowid,
                    pending.outcome,
                    status,
                    reason,
                    pending.first_try or now,
                    pending.last_try or now,
                    pending.tries,
                    now,
                ),
            )
            if pending.outcome is not None:
                self.conn.execute(
                    "INSERT OR REPLACE INTO inbound_seen (guid, rowid, outcome, at) "
                    "VALUES (?, ?, 'parked', ?)",
                    (pending.row_guid, pending.rowid, now),
                )
            if state is not None:
                self.conn.execute(
                    "INSERT OR REPLACE INTO inbound_revisions (guid, rowid, state) "
                    "VALUES (?, ?, ?)",
                    (pending.row_guid, pending.rowid, json.dumps(state)),
                )
            self.conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, '1') ON CONFLICT(key) DO UPDATE "
                "SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT)",
                (parked.TOTAL_KEY,),
            )
            self.conn.execute("DELETE FROM inbound_left_out WHERE guid = ?", (pending.guid,))
        self.left_out.pop(pending.guid, None)
        if pending.outcome is not None:
            self.seen[pending.row_guid] = pending.rowid
        if state is not None:
            self.revisions[pending.row_guid] = state

    def retries(self) -> List[Pending]:
        """The parked events marked to be forwarded again, oldest first.

        Their revision state was recorded when they were parked, so they carry none: telling
        it again could undo a later edit's.
        """
        rows = self.conn.execute(
            "SELECT event, rowid, row_guid, outcome FROM inbound_parked WHERE retry = 1 "
            "ORDER BY first_attempt_at, guid"
        ).fetchall()
        taken = []
        for event, rowid, row_guid, outcome in rows:
            pending = Pending(json.loads(event), rowid, row_guid, outcome, None)
            pending.retried = True
            taken.append(pending)
        return taken


class Pending:
    """An event waiting to be acknowledged, and what its acknowledgement records."""

    __slots__ = (
        "event",
        "rowid",
        "row_guid",
        "outcome",
        "revision",
        "tries",
        "first_try",
        "last_try",
        "left_out",
        "left_out_since",
        "retried",
    )

    def __init__(
        self,
        event: Dict[str, Any],
        rowid: int,
        row_guid: str,
        outcome: Optional[str],
        revision: Optional[Dict[str, Any]],
    ):
        self.event = event
        self.rowid = rowid
        self.row_guid = row_guid
        # "acked" for a new row (it becomes seen); None for an edit or unsend of a seen row.
        self.outcome = outcome
        # The keys of the row's revision state this event brings up to date.
        self.revision = revision
        # Requests that carried the event, and when the first and the last went (Unix time).
        self.tries = 0
        self.first_try: Optional[float] = None
        self.last_try: Optional[float] = None
        # Answers that left it out of `accepted`, and the Unix time of the first (kept by the
        # ledger across restarts).
        self.left_out = 0
        self.left_out_since: Optional[float] = None
        # A parked event sent again on request: one more try, then parked again.
        self.retried = False

    @property
    def guid(self) -> str:
        return str(self.event["guid"])

    @property
    def chat(self) -> str:
        return str(self.event["chat_guid"])


class Inbound:
    """Reads chat.db when woken (or every `poll_interval_s`) and forwards what is new."""

    def __init__(
        self,
        chat_db: ChatDB,
        backend: Backend,
        store: StateStore,
        poll_interval_s: float,
        on_commands: Callable[[List[Any]], None],
    ):
        self.chat_db = chat_db
        self.backend = backend
        self.ledger = InboundLedger(store)
        self.poll_interval_s = poll_interval_s
        self.on_commands = on_commands
        self.lanes: collections.OrderedDict[str, Deque[Pending]] = collections.OrderedDict()
        self.queued: Set[str] = set()
        self.busy_chats: Set[str] = set()
        self.requests: Set[asyncio.Future] = set()
        self.retry_at = 0.0
        self.failures = 0
        # What went wrong with the last forwarding, for /health; None once a batch got through.
        self.problem: Optional[str] = None
        self.unreadable = False
        self._incomplete_since: Dict[str, float] = {}
        # Made in run(): an asyncio.Event belongs to the loop that runs it (Python 3.9).
        self._wake: Optional[asyncio.Event] = None

    def wake(self) -> None:
        """New rows may be in chat.db: read now rather than at the next poll."""
        if self._wake is not None:
            self._wake.set()

    @property
    def waiting(self) -> int:
        """Events read but not yet acknowledged."""
        return len(self.queued)

    async def run(self) -> None:
        self._wake = asyncio.Event()
        try:
            await self._first_start()
            woken = False
            while True:
                await self._read()
                self._take_retries()
                self._dispatch()
                # The folder event comes when Messages writes the WAL, which can be a moment
                # before its commit is visible: a woken read is followed by one more shortly.
                wait = FOLLOW_UP_S if woken else self.poll_interval_s
                if self.lanes and self.retry_at:
                    wait = min(wait, max(0.0, self.retry_at - time.monotonic()))
                # asyncio.wait, not wait_for: wait_for can swallow a cancellation that arrives
                # as the wake does (Python before 3.12), and the drain would never end.
                waiter = asyncio.ensure_future(self._wake.wait())
                try:
                    await asyncio.wait({waiter}, timeout=wait)
                finally:
                    waiter.cancel()
                woken = self._wake.is_set()
                self._wake.clear()
        finally:
            for request in self.requests:
                request.cancel()
            await asyncio.gather(*self.requests, return_exceptions=True)

    async def _first_start(self) -> None:
        """Records "now" before anything is read, on the first start (or an upgrade)."""
        attempt = 0
        while not self.ledger.initialised:
            try:
                settled = self.ledger.settled
                if settled is None:
                    settled = await asyncio.to_thread(self.chat_db.max_rowid)
                marks = await asyncio.to_thread(self.chat_db.scan, settled - LOOKBACK_ROWS)
            except ChatDBError as error:
                log.error("first start: %s", error)
                attempt += 1
                await asyncio.sleep(min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2**attempt))
                continue
            self.ledger.start_from(marks, settled)
            log.info("first start: reading from now on (message row %d); history skipped", settled)

    # Reading

    async def _read(self) -> None:
        settled = self.ledger.settled or 0
        try:
            marks = await asyncio.to_thread(self.chat_db.scan, settled - LOOKBACK_ROWS)
            wanted = self._wanted(marks)
            rows = await asyncio.to_thread(self.chat_db.read_rows, wanted) if wanted else []
        except ChatDBError as error:
            if not self.unreadable:
                log.error("%s", error)
            self.unreadable = True
            return
        if self.unreadable:
            log.info("chat.db is readable again")
        self.unreadable = False
        self._take(rows)
        self._settle(marks)

    def _wanted(self, marks: List[RowMark]) -> List[int]:
        """ROWIDs to read in full: rows not handled yet, and forwarded messages edited since."""
        wanted = []
        new = 0
        for mark in marks:
            if mark.guid not in self.ledger.seen:
                if mark.guid in self.queued:
                    continue
                new += 1
                if new > READ_ROWS:
                    continue
                wanted.append(mark.rowid)
                continue
            state = self.ledger.revisions.get(mark.guid)
            if state is not None and mark.revision != (state["edited"], state["retracted"]):
                wanted.append(mark.rowid)
        return wanted

    def _take(self, rows: List[MessageRow]) -> None:
        skipped: List[tuple] = []
        revised: List[tuple] = []
        held_back = False
        now = time.monotonic()
        for row in rows:
            if row.guid in self.ledger.seen:
                revised.extend(self._revise(row))
                continue
            if held_back:
                continue
            event = None if row.is_from_me or is_unsent_whole(row) else row_event(row)
            if event is None:
                skipped.append((row.guid, row.rowid, "skipped"))
                continue
            if not row.complete:
                # Messages may write a message before filing it in its chat: the rows after it
                # wait a little, then it is passed over, as the backend cannot take it.
                first_seen = self._incomplete_since.setdefault(row.guid, now)
                if now - first_seen < INCOMPLETE_WAIT_S:
                    held_back = True
                    continue
                log.warning("message %s has no chat or handle in chat.db; not forwarded", row.guid)
                self._incomplete_since.pop(row.guid, None)
                skipped.append((row.guid, row.rowid, "skipped"))
                continue
            self._incomplete_since.pop(row.guid, None)
            revision = revision_of(row) if event["type"] == "message" else None
            self._queue(Pending(event, row.rowid, row.guid, "acked", revision), front=False)
        if skipped or revised:
            self.ledger.handled(skipped, revised)

    def _revise(self, row: MessageRow) -> List[tuple]:
        """Queues the edit and unsend events of a forwarded message; returns quiet updates."""
        before = self.ledger.revisions.get(row.guid)
        if before is None:
            return []
        events, after = revision_events(row, before)
        fresh = [e for e in events if e["guid"] not in self.queued]
        if not events:
            # The dates moved but nothing new was said (a re-save): remember the new dates.
            return [(row.guid, row.rowid, after)]
        for event in fresh:
            if not row.complete:
                continue
            keys = ("edited", "edits") if event["type"] == "edit" else ("retracted", "unsent")
            update = {key: after[key] for key in keys}
            self._queue(Pending(event, row.rowid, row.guid, None, update), front=False)
        return []

    def _take_retries(self) -> None:
        """Puts the parked events marked for a retry back into their chats' lanes."""
        for pending in self.ledger.retries():
            if pending.guid in self.queued:
                continue
            self._queue(pending, front=False)
            log.info("parked event %s is forwarded again", pending.guid)

    def _queue(self, pending: Pending, front: bool) -> None:
        chat = str(pending.event["chat_guid"])
        lane = self.lanes.get(chat)
        if lane is None:
            lane = self.lanes[chat] = collections.deque()
        if front:
            lane.appendleft(pending)
        else:
            lane.append(pending)
        self.queued.add(pending.event["guid"])

    def _settle(self, marks: List[RowMark]) -> None:
        """Moves the settled mark over the run of handled rows above it."""
        settled = self.ledger.settled or 0
        advanced = settled
        for mark in marks:
            if mark.rowid <= settled:
                continue
            if mark.guid not in self.ledger.seen:
                break
            advanced = mark.rowid
        if advanced > settled:
            self.ledger.settle(advanced)

    # Forwarding

    def _dispatch(self) -> None:
        while len(self.requests) < MAX_IN_FLIGHT and time.monotonic() >= self.retry_at:
            batch: List[Pending] = []
            chats = []
            for chat, lane in self.lanes.items():
                if chat in self.busy_chats:
                    continue
                if batch and len(batch) + len(lane) > BATCH_EVENTS:
                    break
                chats.append(chat)
                batch.extend(lane)
                if len(batch) >= BATCH_EVENTS:
                    break
            if not batch:
                return
            for chat in chats:
                del self.lanes[chat]
                self.busy_chats.add(chat)
            # A single chat with more than a batch's worth sends its oldest first.
            rest = batch[BATCH_EVENTS:]
            batch = batch[:BATCH_EVENTS]
            for pending in reversed(rest):
                self._queue(pending, front=True)
            request = asyncio.ensure_future(self._forward(batch, chats))
            self.requests.add(request)
            request.add_done_callback(self.requests.discard)

    async def _forward(self, batch: List[Pending], chats: List[str]) -> None:
        try:
            left, unaccepted, failure = await self._deliver(batch)
        finally:
            for chat in chats:
                self.busy_chats.discard(chat)
            self.wake()

        if failure is not None:
            self.problem = f"forwarding events failed: {failure}"
            self._put_back(left)
            wait = self._back_off()
            log.warning(
                "forwarding %d event(s) failed (%s); retrying in %.1f s", len(left), failure, wait
            )
        elif left:
            self.problem = f"the backend left {unaccepted} event(s) unaccepted"
            self._put_back(left)
            wait = self._back_off()
            log.warning(
                "the backend left %d event(s) unaccepted; resending %d in %.1f s, in order",
                unaccepted,
                len(left),
                wait,
            )
        else:
            self.problem = None
            self.failures = 0
            self.retry_at = 0.0

    async def _deliver(
        self, batch: List[Pending]
    ) -> Tuple[List[Pending], int, Optional[BackendError]]:
        """Sends `batch`, in halves while the backend refuses it; returns what goes back.

        That is the events to put back (in order), how many of them the backend left out of
        `accepted`, and the error that ended the round (unreachable, 5xx, 401, ...), if any:
        the part it hit and every part after it go back unsent. A chat with an event going
        back keeps its later events back too, whichever part they are in.
        """
        parts = [batch]
        left: List[Pending] = []
        unaccepted = 0
        held: Set[str] = set()
        while parts:
            part = parts.pop(0)
            left.extend(pending for pending in part if pending.chat in held)
            part = [pending for pending in part if pending.chat not in held]
            if not part:
                continue
            now = time.time()
            for pending in part:
                pending.tries += 1
                pending.first_try = pending.first_try or now
                pending.last_try = now
            try:
                answer = await self.backend.inbound([pending.event for pending in part])
            except BackendError as error:
                if not error.refused:
                    left.extend(part)
                    left.extend(pending for rest in parts for pending in rest)
                    return left, unaccepted, error
                if len(part) == 1:
                    self._park(part[0], error.status or 0, error.reason or str(error))
                    continue
                first, second = halves(part)
                log.warning(
                    "the backend refused %d event(s) with %s; sending them again as %d and %d",
                    len(part),
                    error.status,
                    len(first),
                    len(second),
                )
                parts[:0] = [first, second]
                continue
            back, left_out = self._answered(part, answer)
            left.extend(back)
            unaccepted += left_out
            held.update(pending.chat for pending in back)
        return left, unaccepted, None

    def _answered(self, part: List[Pending], answer: Dict[str, Any]) -> Tuple[List[Pending], int]:
        """Settles what was accepted and parks what is due; returns the events to send again
        (in order) and how many of them the backend left out."""
        accepted = set(answer["accepted"])
        now = time.time()
        left_out = [pending for pending in part if pending.guid not in accepted]
        if left_out:
            self.ledger.left_out_again(left_out, now)
        done, due, back = self._split_by_chat(part, accepted, now)
        for pending in due:
            self._park(pending, LEFT_OUT_STATUS, left_out_reason(pending, now))
        self._acknowledged(done)
        log.info(
            "batch forwarded: %d event(s), %d accepted, %d handled, guids %s",
            len(part),
            len(accepted & {pending.guid for pending in part}),
            len(done),
            ",".join(pending.guid for pending in part),
        )
        self.on_commands(answer.get("commands") or [])
        return back, sum(1 for pending in back if pending.guid not in accepted)

    @staticmethod
    def _split_by_chat(
        batch: List[Pending], accepted: Set[str], now: float
    ) -> Tuple[List[Pending], List[Pending], List[Pending]]:
        """(handled, to park, to resend): per chat, the events up to its first unaccepted one
        that is not due to be parked count.

        An event accepted after an unaccepted one of its chat is sent again behind it, so the
        relay never counts a chat's later message handled while an earlier one still waits.
        """
        done: List[Pending] = []
        due: List[Pending] = []
        left: List[Pending] = []
        held: Set[str] = set()
        for pending in batch:
            if pending.chat in held:
                left.append(pending)
            elif pending.guid in accepted:
                done.append(pending)
            elif due_to_park(pending, now):
                due.append(pending)
            else:
                held.add(pending.chat)
                left.append(pending)
        return done, due, left

    def _acknowledged(self, done: List[Pending]) -> None:
        rows = [(p.row_guid, p.rowid, p.outcome) for p in done if p.outcome is not None]
        revisions = []
        for pending in done:
            if pending.revision is None:
                continue
            state = self.ledger.revised(pending)
            revisions.append((pending.row_guid, pending.rowid, state))
            self.ledger.revisions[pending.row_guid] = state
        unparked = [pending.guid for pending in done if pending.retried]
        self.ledger.handled(rows, revisions, unparked, [pending.guid for pending in done])
        for pending in done:
            self.queued.discard(pending.guid)
        for guid in unparked:
            log.info("parked event %s accepted by the backend; no longer parked", guid)

    def _park(self, pending: Pending, status: int, reason: str) -> None:
        reason = without_text(reason, pending.event)
        self.ledger.park(pending, status, reason)
        self.queued.discard(pending.guid)
        log.warning(
            "event %s parked (backend status %d): %s; `edge-relay parked --retry %s` forwards "
            "it again",
            pending.guid,
            status,
            reason,
            pending.guid,
        )

    def _put_back(self, batch: List[Pending]) -> None:
        for pending in reversed(batch):
            self.queued.discard(pending.event["guid"])
            self._queue(pending, front=True)

    def _back_off(self) -> float:
        """Exponential back-off with jitter, so a fleet coming back does not arrive at once."""
        self.failures += 1
        ceiling = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (self.failures - 1))
        wait = random.uniform(ceiling / 2, ceiling)
        self.retry_at = time.monotonic() + wait
        return wait


def halves(part: List[Pending]) -> Tuple[List[Pending], List[Pending]]:
    """A refused batch in two: whole chats, split nearest the middle, when it holds several;
    else the older and the newer half of its one chat."""
    chats: Dict[str, List[Pending]] = collections.OrderedDict()
    for pending in part:
        chats.setdefault(pending.chat, []).append(pending)
    if len(chats) == 1:
        middle = len(part) // 2
        return part[:middle], part[middle:]
    runs = list(chats.values())
    cut, before, nearest = 1, 0, None
    for index, run in enumerate(runs[:-1], start=1):
        before += len(run)
        distance = abs(2 * before - len(part))
        if nearest is None or distance < nearest:
            cut, nearest = index, distance
    return (
        [pending for run in runs[:cut] for pending in run],
        [pending for run in runs[cut:] for pending in run],
    )


def due_to_park(pending: Pending, now: float) -> bool:
    """Left out once after a retry, or PARK_AFTER times over at least PARK_AFTER_S."""
    if pending.retried:
        return True
    since = pending.left_out_since
    return pending.left_out >= PARK_AFTER and since is not None and now - since >= PARK_AFTER_S


def left_out_reason(pending: Pending, now: float) -> str:
    if pending.retried:
        return "left out of accepted again when retried"
    since = pending.left_out_since if pending.left_out_since is not None else now
    return f"left out of accepted {pending.left_out} times over {now - since:.0f} s"


def without_text(reason: str, event: Dict[str, Any]) -> str:
    """The backend's reason with the event's text cut out, should the backend quote it: the
    reason is logged and listed, the text never."""
    for text in sorted(_texts(event), key=len, reverse=True):
        if len(text.strip()) >= TEXT_MIN_CHARS:
            reason = reason.replace(text, "[text]")
    return reason


def _texts(value: Any) -> Iterator[str]:
    """Every `text` of an event: the message's, and those of an edit's history."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "text" and isinstance(item, str):
                yield item
            else:
                yield from _texts(item)
    elif isinstance(value, list):
        for item in value:
            yield from _texts(item)
