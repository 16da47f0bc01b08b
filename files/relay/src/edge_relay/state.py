"""The relay's own durable state: one SQLite file in `state_dir`.

It holds the inbound cursor (the last chat.db ROWID the backend acknowledged; its ledger and
the events the backend would not take are in inbound.py and parked.py), the SendQueue with its
figures, the results not yet reported, recent drop times for /health, and whether the running
relay has drained (a start that finds the last run never did counts an undrained stop).
Every change is committed before the relay acts on it, so a crash or a restart loses nothing
the backend was told about.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from typing import Any, Dict, List, Optional, Tuple

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS queue (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    command_id TEXT NOT NULL UNIQUE,
    command TEXT NOT NULL,
    bubbles TEXT NOT NULL,
    enqueued_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    in_flight INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE TABLE IF NOT EXISTS finished (command_id TEXT PRIMARY KEY, finished_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS results (
    command_id TEXT PRIMARY KEY, status TEXT NOT NULL, detail TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS drops (at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS arrivals (at REAL NOT NULL);
"""

FIGURES = ("totalEnqueued", "totalDelivered", "totalDropped", "totalExpired", "totalUncertain")
# The figure each final status of a queued send counts in ("failed" is counted by none).
STATUS_FIGURES = {
    "delivered": "totalDelivered",
    "expired": "totalExpired",
    "uncertain": "totalUncertain",
}
# The state database's file name in `state_dir`.
STATE_FILE = "relay-state.db"
# A command id is remembered this long after its result, so a copy handed out again by the
# backend (it re-leases after 180 s without a result) is not sent twice.
FINISHED_KEEP_S = 24 * 3600


class StateStore:
    def __init__(self, state_dir: str):
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        self.path = os.path.join(state_dir, STATE_FILE)
        self.conn = sqlite3.connect(self.path, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = FULL")
        self.conn.executescript(SCHEMA)

    def close(self) -> None:
        self.conn.close()

    def _transaction(self, statements: List[Tuple[str, Tuple[Any, ...]]]) -> None:
        with self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            for sql, params in statements:
                self.conn.execute(sql, params)

    # Cursor

    def cursor(self) -> Optional[int]:
        row = self.conn.execute("SELECT value FROM meta WHERE key = 'cursor'").fetchone()
        return int(row[0]) if row else None

    def set_cursor(self, rowid: int) -> None:
        self._transaction(
            [("INSERT OR REPLACE INTO meta (key, value) VALUES ('cursor', ?)", (str(rowid),))]
        )

    # Queue figures

    def figures(self) -> Dict[str, int]:
        rows = dict(self.conn.execute("SELECT key, value FROM meta").fetchall())
        return {name: int(rows.get(name, 0)) for name in FIGURES}

    @staticmethod
    def _bump(name: str) -> Tuple[str, Tuple[Any, ...]]:
        return (
            "INSERT INTO meta (key, value) VALUES (?, '1') ON CONFLICT(key) DO UPDATE "
            "SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT)",
            (name,),
        )

    # Runs: a run is marked from its start until its drain finishes.

    def begin_run(self, now: float) -> bool:
        """Marks a run as started; True when the last run stopped without draining.

        That run was killed (kill -9, a crash, a power cut) or is still running elsewhere on
        the same state, which launchd's one job per shard rules out.
        """
        row = self.conn.execute("SELECT 1 FROM meta WHERE key = 'runningSince'").fetchone()
        statements = [
            ("INSERT OR REPLACE INTO meta (key, value) VALUES ('runningSince', ?)", (repr(now),))
        ]
        if row:
            statements.append(self._bump("undrainedStops"))
            statements.append(
                (
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('undrainedStopFoundAt', ?)",
                    (repr(now),),
                )
            )
        self._transaction(statements)
        return row is not None

    def end_run(self) -> None:
        """Marks the run as drained: the next start is not an undrained stop."""
        self._transaction([("DELETE FROM meta WHERE key = 'runningSince'", ())])

    def undrained_stops(self) -> Tuple[int, Optional[float]]:
        """How many runs stopped without draining, and when a start last found one."""
        sql = "SELECT key, value FROM meta WHERE key IN ('undrainedStops', 'undrainedStopFoundAt')"
        rows = dict(self.conn.execute(sql).fetchall())
        found_at = rows.get("undrainedStopFoundAt")
        return int(rows.get("undrainedStops", 0)), None if found_at is None else float(found_at)

    # Queue items

    def load_queue(self) -> List[Dict[str, Any]]:
        rows = self.conn.execute(
            "SELECT command_id, command, bubbles, enqueued_at, expires_at, attempts, "
            "next_attempt_at, in_flight, last_error FROM queue ORDER BY seq"
        ).fetchall()
        return [
            {
                "command_id": r[0],
                "command": json.loads(r[1]),
                "bubbles": json.loads(r[2]),
                "enqueued_at": r[3],
                "expires_at": r[4],
                "attempts": r[5],
                "next_attempt_at": r[6],
                "in_flight": bool(r[7]),
                "last_error": r[8],
            }
            for r in rows
        ]

    def is_known(self, command_id: str) -> bool:
        """Whether the command is queued or was finished recently."""
        for table in ("queue", "finished"):
            sql = f"SELECT 1 FROM {table} WHERE command_id = ?"
            if self.conn.execute(sql, (command_id,)).fetchone():
                return True
        return False

    def enqueue(self, item: Dict[str, Any], now: float) -> None:
        self._transaction(
            [
                (
                    "INSERT INTO queue (command_id, command, bubbles, enqueued_at, expires_at, "
                    "next_attempt_at) VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        item["command_id"],
                        json.dumps(item["command"]),
                        json.dumps(item["bubbles"]),
                        item["enqueued_at"],
                        item["expires_at"],
                        item["next_attempt_at"],
                    ),
                ),
                self._bump("totalEnqueued"),
                ("INSERT INTO arrivals (at) VALUES (?)", (now,)),
            ]
        )

    def record_drop(self, command_id: str, now: float, status: str, detail: str) -> None:
        self._transaction(
            [
                self._bump("totalDropped"),
                ("INSERT INTO drops (at) VALUES (?)", (now,)),
                (
                    "INSERT OR REPLACE INTO finished (command_id, finished_at) VALUES (?, ?)",
                    (command_id, now),
                ),
                (
                    "INSERT OR REPLACE INTO results (command_id, status, detail, created_at) "
                    "VALUES (?, ?, ?, ?)",
                    (command_id, status, detail, now),
                ),
            ]
        )

    def update_item(self, item: Dict[str, Any]) -> None:
        self._transaction(
            [
                (
                    "UPDATE queue SET bubbles = ?, attempts = ?, next_attempt_at = ?, "
                    "in_flight = ?, last_error = ? WHERE command_id = ?",
                    (
                        json.dumps(item["bubbles"]),
                        item["attempts"],
                        item["next_attempt_at"],
                        int(item["in_flight"]),
                        item["last_error"],
                        item["command_id"],
                    ),
                )
            ]
        )

    def finish(self, command_id: str, status: str, detail: str, now: float) -> None:
        """Removes the item, counts a delivery, and keeps the result until it is reported."""
        statements = [
            ("DELETE FROM queue WHERE command_id = ?", (command_id,)),
            (
                "INSERT OR REPLACE INTO finished (command_id, finished_at) VALUES (?, ?)",
                (command_id, now),
            ),
            (
                "INSERT OR REPLACE INTO results (command_id, status, detail, created_at) "
                "VALUES (?, ?, ?, ?)",
                (command_id, status, detail, now),
            ),
        ]
        if status in STATUS_FIGURES:
            statements.append(self._bump(STATUS_FIGURES[status]))
        self._transaction(statements)

    # Results waiting to be reported

    def pending_results(self) -> List[Tuple[str, str, str]]:
        return self.conn.execute(
            "SELECT command_id, status, detail FROM results ORDER BY created_at"
        ).fetchall()

    def result_reported(self, command_id: str) -> None:
        self._transaction([("DELETE FROM results WHERE command_id = ?", (command_id,))])

    # Recent history for /health

    def recent_drops(self, since: float) -> int:
        """Commands dropped since `since`; older history is pruned."""
        self._transaction(
            [
                ("DELETE FROM drops WHERE at < ?", (since,)),
                ("DELETE FROM arrivals WHERE at < ?", (since,)),
                ("DELETE FROM finished WHERE finished_at < ?", (time.time() - FINISHED_KEEP_S,)),
            ]
        )
        return self.conn.execute("SELECT COUNT(*) FROM drops WHERE at >= ?", (since,)).fetchone()[0]

    def recent_arrivals(self, since: float) -> int:
        """Commands taken into the queue since `since` (with the drops: the drop rate's base)."""
        sql = "SELECT COUNT(*) FROM arrivals WHERE at >= ?"
        return self.conn.execute(sql, (since,)).fetchone()[0]
