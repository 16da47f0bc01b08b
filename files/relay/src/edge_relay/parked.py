"""Inbound events the backend would not take, parked in the relay's state database.

The relay parks an event the backend refused on its own (a 4xx about the event, found by
sending a refused batch again in halves) or left out of `accepted` time after time (see
inbound.py). A parked event is kept whole in the table `inbound_parked` of the state database
and counted as handled, so the settled mark and the event's chat go on without it; nothing of
it is lost. `edge-relay parked` lists them without their text, and `--retry` marks them to be
forwarded again: the running relay takes the marks within a poll (or at its next start), and an
event the backend then accepts leaves the table.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, List, Optional, Tuple, Union
from urllib.parse import quote

from edge_relay.config import ConfigError, load
from edge_relay.state import STATE_FILE

PARKED_SCHEMA = """
CREATE TABLE IF NOT EXISTS inbound_parked (
    guid TEXT PRIMARY KEY,
    chat_guid TEXT NOT NULL,
    event TEXT NOT NULL,
    row_guid TEXT NOT NULL,
    rowid INTEGER NOT NULL,
    outcome TEXT,
    status INTEGER NOT NULL,
    reason TEXT NOT NULL,
    first_attempt_at REAL NOT NULL,
    last_attempt_at REAL NOT NULL,
    attempts INTEGER NOT NULL,
    parked_at REAL NOT NULL,
    retry INTEGER NOT NULL DEFAULT 0);
"""
# The meta key counting every parking since the state database was made (for /metrics).
TOTAL_KEY = "inbound_parked_total"


class ParkedError(Exception):
    """The parked events cannot be read or changed; the message says what to do."""


@dataclass
class ParkedEvent:
    guid: str
    chat_guid: str
    status: int
    reason: str
    first_attempt_at: float
    last_attempt_at: float
    attempts: int
    parked_at: float
    retry: bool


def _has_table(conn: sqlite3.Connection) -> bool:
    sql = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'inbound_parked'"
    return conn.execute(sql).fetchone() is not None


def summary(conn: sqlite3.Connection) -> Tuple[int, Optional[str]]:
    """(how many are parked, the guid of the one first tried longest ago)."""
    if not _has_table(conn):
        return 0, None
    (count,) = conn.execute("SELECT COUNT(*) FROM inbound_parked").fetchone()
    oldest = conn.execute(
        "SELECT guid FROM inbound_parked ORDER BY first_attempt_at, guid LIMIT 1"
    ).fetchone()
    return count, oldest[0] if oldest else None


def total(conn: sqlite3.Connection) -> int:
    """Parkings since the state database was made, retried events parked again included."""
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (TOTAL_KEY,)).fetchone()
    return int(row[0]) if row else 0


def listed(conn: sqlite3.Connection) -> List[ParkedEvent]:
    """Every parked event, oldest first; never the event itself (it holds the text)."""
    if not _has_table(conn):
        return []
    rows = conn.execute(
        "SELECT guid, chat_guid, status, reason, first_attempt_at, last_attempt_at, attempts, "
        "parked_at, retry FROM inbound_parked ORDER BY first_attempt_at, guid"
    ).fetchall()
    return [ParkedEvent(*row[:8], retry=bool(row[8])) for row in rows]


def mark_retry(conn: sqlite3.Connection, guid: Optional[str]) -> int:
    """Marks one parked event (or all, for None) to be forwarded again; returns how many.

    Raises ParkedError, changing nothing, when `guid` is not parked.
    """
    if guid is not None and not any(event.guid == guid for event in listed(conn)):
        raise ParkedError(f"no parked event has guid {guid}")
    if not _has_table(conn):
        return 0
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        if guid is None:
            cursor = conn.execute("UPDATE inbound_parked SET retry = 1")
        else:
            cursor = conn.execute("UPDATE inbound_parked SET retry = 1 WHERE guid = ?", (guid,))
    return cursor.rowcount


def open_state(state_dir: str, writable: bool) -> Optional[sqlite3.Connection]:
    """The relay's state database, opened as it is (never created); None when there is none."""
    path = os.path.join(state_dir, STATE_FILE)
    if not os.path.exists(path):
        return None
    mode = "rw" if writable else "ro"
    try:
        conn = sqlite3.connect(
            f"file:{quote(path)}?mode={mode}", uri=True, timeout=5.0, isolation_level=None
        )
        conn.execute("SELECT 1 FROM sqlite_master LIMIT 1")
    except sqlite3.Error as error:
        raise ParkedError(
            f"cannot open the relay's state database {path} ({error}); run this as the shard's user"
        ) from None
    return conn


def when(moment: float) -> str:
    return datetime.fromtimestamp(moment, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _table(events: List[ParkedEvent]) -> List[str]:
    header = ("GUID", "CHAT", "PARKED (UTC)", "STATUS", "ATTEMPTS", "REASON")
    rows = [
        (
            event.guid,
            event.chat_guid,
            when(event.parked_at),
            str(event.status),
            str(event.attempts),
            event.reason + (" (retry asked)" if event.retry else ""),
        )
        for event in events
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    return [
        "  ".join([*(cell.ljust(width) for cell, width in zip(row, widths)), row[-1]])
        for row in [header, *rows]
    ]


def run(
    config_path: str,
    retry: Union[None, bool, str] = None,
    out: Optional[Callable[[str], None]] = None,
    err: Optional[Callable[[str], None]] = None,
) -> int:
    """Lists the parked events, or with `retry` (True: all, or one guid) marks them for a retry.

    Exit 0 when done, 1 when the state cannot be read or the guid is not parked (nothing
    changes then), 2 for an unusable configuration.
    """
    out = out or print
    err = err or print
    try:
        config = load(config_path)
    except ConfigError as error:
        err(f"edge-relay: {config_path} has {len(error.problems)} problem(s):")
        for problem in error.problems:
            err(f"  - {problem}")
        return 2
    command = f"edge-relay parked --config {config_path}"
    try:
        conn = open_state(config.state_dir, writable=retry is not None)
    except ParkedError as error:
        err(f"edge-relay: {error}")
        return 1
    if conn is None:
        if isinstance(retry, str):
            err(f"edge-relay: no parked event has guid {retry}: {config.state_dir} holds no state")
            return 1
        out(f"no parked events: the relay has kept no state in {config.state_dir} yet")
        return 0
    try:
        if retry is None:
            events = listed(conn)
            if not events:
                out("no parked events: the backend took every event the relay forwarded")
                return 0
            for line in _table(events):
                out(line)
            out(
                f"{len(events)} parked event(s); once the backend takes them, "
                f"`{command} --retry [GUID]` forwards them again"
            )
            return 0
        try:
            marked = mark_retry(conn, retry if isinstance(retry, str) else None)
        except ParkedError as error:
            err(f"edge-relay: {error}; `{command}` lists those parked")
            return 1
        except sqlite3.Error as error:
            err(f"edge-relay: the parked events could not be marked ({error}); nothing changed")
            return 1
        if not marked:
            out("no parked events to retry")
            return 0
        out(
            f"{marked} parked event(s) marked to be forwarded again: the running relay sends "
            "them within a poll (or at its next start); an event the backend accepts leaves "
            f"the list of `{command}`"
        )
        return 0
    finally:
        conn.close()
