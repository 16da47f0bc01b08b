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
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import random
import sqlite3
import time
from typing import Any, Callable, Deque, Dict, List, Optional, Set, Tuple

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

LEDGER_SCHEMA = """
CREATE TABLE IF NOT EXISTS inbound_seen (
    guid TEXT PRIMARY KEY, rowid INTEGER NOT NULL, outcome TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS inbound_seen_rowid ON inbound_seen (rowid);
CREATE TABLE IF NOT EXISTS inbound_revisions (
    guid TEXT PRIMARY KEY, rowid INTEGER NOT NULL, state TEXT NOT NULL);
"""


class InboundLedger:
    """The durable record of what was handled: settled mark, seen guids, revision states."""

    def __init__(self, store: StateStore):
        self.store = store
        self.conn: sqlite3.Connection = store.conn
        self.conn.executescript(LEDGER_SCHEMA)
        self.seen: Dict[str, int] = {}
        self.revisions: Dict[str, Dict[str, Any]] = {}
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
    ) -> None:
        """Records (guid, rowid, outcome) rows and (guid, rowid, state) revisions at once."""
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
        self.seen = {g: r for g, r in self.seen.items() if r > floor}
        self.revisions = {g: s for g, s in self.revisions.items() if self.seen.get(g, 0) > floor}


class Pending:
    """An event waiting to be acknowledged, and what its acknowledgement records."""

    __slots__ = ("event", "rowid", "row_guid", "outcome", "revision")

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
        events = [pending.event for pending in batch]
        try:
            answer = await self.backend.inbound(events)
        except BackendError as error:
            self.problem = f"forwarding events failed: {error}"
            self._put_back(batch)
            wait = self._back_off()
            log.warning(
                "forwarding %d event(s) failed (%s); retrying in %.1f s", len(events), error, wait
            )
            return
        finally:
            for chat in chats:
                self.busy_chats.discard(chat)
            self.wake()

        accepted = set(answer["accepted"])
        done, left = self._split_by_chat(batch, accepted)
        self._acknowledged(done)
        log.info(
            "batch forwarded: %d event(s), %d accepted, %d handled, guids %s",
            len(events),
            len(accepted & {str(event["guid"]) for event in events}),
            len(done),
            ",".join(str(event["guid"]) for event in events),
        )
        self.on_commands(answer.get("commands") or [])
        if left:
            unaccepted = sum(1 for pending in left if pending.event["guid"] not in accepted)
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

    @staticmethod
    def _split_by_chat(
        batch: List[Pending], accepted: Set[str]
    ) -> Tuple[List[Pending], List[Pending]]:
        """(handled, to resend): per chat, the events up to its first unaccepted one count.

        An event accepted after an unaccepted one of its chat is sent again behind it, so the
        relay never counts a chat's later message handled while an earlier one still waits.
        """
        done: List[Pending] = []
        left: List[Pending] = []
        held: Set[str] = set()
        for pending in batch:
            chat = str(pending.event["chat_guid"])
            if chat not in held and pending.event["guid"] in accepted:
                done.append(pending)
                continue
            held.add(chat)
            left.append(pending)
        return done, left

    def _acknowledged(self, done: List[Pending]) -> None:
        rows = [(p.row_guid, p.rowid, p.outcome) for p in done if p.outcome is not None]
        revisions = []
        for pending in done:
            if pending.revision is None:
                continue
            state = dict(self.ledger.revisions.get(pending.row_guid) or {})
            state.update(pending.revision)
            revisions.append((pending.row_guid, pending.rowid, state))
            self.ledger.revisions[pending.row_guid] = state
        self.ledger.handled(rows, revisions)
        for pending in done:
            self.queued.discard(pending.event["guid"])

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
