"""The backend's data access: every statement it runs, written once for SQLite and PostgreSQL.

Each public method is one transaction. Methods take the current time as an
argument so that the server and the tests decide what "now" is.
"""

import json
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Optional

from edge_backend.db import Database

SHARD_COLUMNS = (
    "shard_id, persona, phone_number, agent_id, host, state, capacity, active_users,"
    " relay_version, last_seen_at, created_at, updated_at"
)
OPEN_COMMAND_STATES = ("queued", "leased")
RESULT_STATES = ("delivered", "failed", "expired", "uncertain")


class NotFound(Exception):
    """The thing asked for does not exist (HTTP 404)."""


class Conflict(Exception):
    """The request contradicts the current state (HTTP 409)."""


def iso(moment: datetime) -> str:
    """ISO 8601 UTC text of fixed width, so that text order is time order."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_iso(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(8)


@dataclass
class InboundOutcome:
    new_guids: list[str] = field(default_factory=list)
    replies: list[str] = field(default_factory=list)
    canaries_answered: list[str] = field(default_factory=list)
    assigned: int = 0


@dataclass
class Lease:
    commands: list[dict]
    next_release_at: Optional[datetime]  # when a leased command may be handed out again


class Store:
    def __init__(self, db: Database):
        self.db = db
        self._last_created: Optional[datetime] = None

    def _creation_time(self, now: datetime) -> datetime:
        """Strictly increasing creation times, so commands keep the order they were made in."""
        if self._last_created is not None and now <= self._last_created:
            now = self._last_created + timedelta(microseconds=1)
        self._last_created = now
        return now

    # Shards

    def shard_by_token_hash(self, token_hash: str) -> Optional[dict]:
        with self.db.transaction() as tx:
            return tx.one(
                f"SELECT {SHARD_COLUMNS} FROM persona_shards WHERE token_hash = ?", (token_hash,)
            )

    def list_shards(self) -> list[dict]:
        with self.db.transaction() as tx:
            return tx.all(f"SELECT {SHARD_COLUMNS} FROM persona_shards ORDER BY shard_id")

    def register(self, shard_id: str, version: str, host: Optional[str], now: datetime) -> dict:
        stamp = iso(now)
        with self.db.transaction() as tx:
            tx.execute(
                "UPDATE persona_shards SET relay_version = ?, host = COALESCE(?, host),"
                " last_seen_at = ?, updated_at = ? WHERE shard_id = ?",
                (version, host, stamp, stamp, shard_id),
            )
            row = tx.one(
                f"SELECT {SHARD_COLUMNS} FROM persona_shards WHERE shard_id = ?", (shard_id,)
            )
        if row is None:
            raise NotFound(f"shard '{shard_id}' no longer exists")
        return row

    def heartbeat(self, shard_id: str, version: str, now: datetime) -> None:
        stamp = iso(now)
        with self.db.transaction() as tx:
            tx.execute(
                "UPDATE persona_shards SET last_seen_at = ?,"
                " relay_version = COALESCE(?, relay_version) WHERE shard_id = ?",
                (stamp, version, shard_id),
            )

    # Inbound events

    def record_inbound(
        self,
        shard: dict,
        events: list[dict],
        now: datetime,
        command_ttl_s: float,
        canary_timeout_s: float,
    ) -> InboundOutcome:
        """Record a batch; each guid is processed once, however often it arrives."""
        outcome = InboundOutcome()
        stamp = iso(now)
        with self.db.transaction() as tx:
            for event in events:
                fresh = tx.execute(
                    "INSERT INTO inbound_events (shard_id, guid, received_at) VALUES (?, ?, ?)"
                    " ON CONFLICT DO NOTHING",
                    (shard["shard_id"], event["guid"], stamp),
                )
                if not fresh:
                    continue
                outcome.new_guids.append(event["guid"])
                if event["type"] != "message" or event["is_from_me"]:
                    continue

                text = event.get("text") or ""
                check_id = self._canary_answered(tx, shard, event, text, now, canary_timeout_s)
                if check_id is not None:
                    outcome.canaries_answered.append(check_id)
                    continue

                if shard["state"] != "retiring" and self._assign(
                    tx, shard["persona"], event["handle"], shard["shard_id"], stamp
                ):
                    outcome.assigned += 1
                command = {
                    "type": "send",
                    "chat_guid": event["chat_guid"],
                    "bubbles": [f"echo: {text}"],
                }
                outcome.replies.append(
                    self._queue_command(tx, shard["shard_id"], command, now, command_ttl_s)
                )
        return outcome

    def _canary_answered(
        self, tx, shard: dict, event: dict, text: str, now: datetime, timeout_s: float
    ) -> Optional[str]:
        """The check this message answers, if any; a pending one in time becomes ok."""
        checks = tx.all(
            "SELECT id, status, sent_at FROM canary_checks WHERE shard_id = ? AND handle = ?",
            (shard["shard_id"], event["handle"]),
        )
        for check in checks:
            if check["id"] not in text:
                continue
            if check["status"] == "pending":
                sent_at = parse_iso(check["sent_at"])
                if now - sent_at <= timedelta(seconds=timeout_s):
                    round_trip_ms = int((now - sent_at).total_seconds() * 1000)
                    tx.execute(
                        "UPDATE canary_checks SET status = 'ok', answered_at = ?,"
                        " round_trip_ms = ? WHERE id = ? AND status = 'pending'",
                        (iso(now), round_trip_ms, check["id"]),
                    )
                else:
                    tx.execute(
                        "UPDATE canary_checks SET status = 'timeout'"
                        " WHERE id = ? AND status = 'pending'",
                        (check["id"],),
                    )
            return check["id"]
        return None

    @staticmethod
    def _assign(tx, persona: str, handle: str, shard_id: str, stamp: str) -> bool:
        """Assign the handle to the shard unless it already has one; True when new."""
        fresh = tx.execute(
            "INSERT INTO user_assignments (persona, handle, shard_id, assigned_at)"
            " VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (persona, handle, shard_id, stamp),
        )
        if fresh:
            tx.execute(
                "UPDATE persona_shards SET active_users = active_users + 1, updated_at = ?"
                " WHERE shard_id = ?",
                (stamp, shard_id),
            )
        return bool(fresh)

    def _queue_command(self, tx, shard_id: str, command: dict, now: datetime, ttl_s: float) -> str:
        command_id = new_id("cmd_")
        payload = dict(command, expires_at=iso(now + timedelta(seconds=ttl_s)))
        tx.execute(
            "INSERT INTO edge_commands (id, shard_id, payload, status, created_at)"
            " VALUES (?, ?, ?, 'queued', ?)",
            (command_id, shard_id, json.dumps(payload), iso(self._creation_time(now))),
        )
        return command_id

    # Commands

    def lease_commands(self, shard_id: str, now: datetime, lease_timeout_s: float) -> Lease:
        """Hand out the shard's queued commands and those whose lease ran out.

        A command that was never handed out and has passed its expires_at is
        marked expired. One that was handed out keeps its lease until a result
        arrives: only the relay knows whether it was sent.
        """
        stamp = iso(now)
        release_before = iso(now - timedelta(seconds=lease_timeout_s))
        handed_out: list[dict] = []
        next_release_at: Optional[datetime] = None
        with self.db.transaction() as tx:
            rows = tx.all(
                "SELECT id, payload, status, leased_at FROM edge_commands"
                " WHERE shard_id = ? AND status IN (?, ?) ORDER BY created_at, id",
                (shard_id, *OPEN_COMMAND_STATES),
            )
            for row in rows:
                payload = json.loads(row["payload"])
                expired = parse_iso(payload["expires_at"]) <= now
                if row["status"] == "queued" and expired:
                    tx.execute(
                        "UPDATE edge_commands SET status = 'expired', finished_at = ?,"
                        " detail = ? WHERE id = ? AND status = 'queued'",
                        (stamp, "no relay polled for it before it expired", row["id"]),
                    )
                    continue
                if expired:
                    continue
                if row["status"] == "leased" and row["leased_at"] > release_before:
                    release_at = parse_iso(row["leased_at"]) + timedelta(seconds=lease_timeout_s)
                    if next_release_at is None or release_at < next_release_at:
                        next_release_at = release_at
                    continue
                # Compare-and-set on what was read: a second backend process
                # polling the same database cannot hand the command out too.
                taken = tx.execute(
                    "UPDATE edge_commands SET status = 'leased', leased_at = ?"
                    " WHERE id = ? AND status = ? AND COALESCE(leased_at, '') = ?",
                    (stamp, row["id"], row["status"], row["leased_at"] or ""),
                )
                if taken:
                    handed_out.append(dict(payload, id=row["id"]))
        return Lease(handed_out, next_release_at)

    def record_result(
        self, shard_id: str, command_id: str, status: str, detail: Optional[str], now: datetime
    ) -> bool:
        """Record a relay's result; False when the same result was already recorded."""
        with self.db.transaction() as tx:
            row = tx.one(
                "SELECT status FROM edge_commands WHERE id = ? AND shard_id = ?",
                (command_id, shard_id),
            )
            if row is None:
                raise NotFound(f"shard '{shard_id}' has no command '{command_id}'")
            if row["status"] == status:
                return False
            if row["status"] not in OPEN_COMMAND_STATES:
                raise Conflict(
                    f"command '{command_id}' already has the result '{row['status']}';"
                    " a result is recorded once"
                )
            tx.execute(
                "UPDATE edge_commands SET status = ?, finished_at = ?, detail = ? WHERE id = ?",
                (status, iso(now), detail, command_id),
            )
        return True

    # Canary checks

    def start_canary(
        self, shard_id: str, handle: str, now: datetime, timeout_s: float
    ) -> tuple[str, str]:
        """Queue `canary <check_id>` from the shard to the handle; (check id, command id)."""
        with self.db.transaction() as tx:
            shard = tx.one("SELECT state FROM persona_shards WHERE shard_id = ?", (shard_id,))
            if shard is None:
                raise NotFound(f"there is no shard '{shard_id}'")
            if shard["state"] == "disabled":
                raise Conflict(
                    f"shard '{shard_id}' is disabled and takes no commands; enable it first"
                )
            check_id = new_id("chk_")
            tx.execute(
                "INSERT INTO canary_checks (id, shard_id, handle, status, sent_at)"
                " VALUES (?, ?, ?, 'pending', ?)",
                (check_id, shard_id, handle, iso(now)),
            )
            # Sending after the check has timed out would prove nothing.
            command = {"type": "send", "handle": handle, "bubbles": [f"canary {check_id}"]}
            command_id = self._queue_command(tx, shard_id, command, now, timeout_s)
        return check_id, command_id

    def canary(self, check_id: str, now: datetime, timeout_s: float) -> dict:
        with self.db.transaction() as tx:
            row = tx.one(
                "SELECT id, shard_id, handle, status, sent_at, answered_at, round_trip_ms"
                " FROM canary_checks WHERE id = ?",
                (check_id,),
            )
            if row is None:
                raise NotFound(f"there is no canary check '{check_id}'")
            late = now - parse_iso(row["sent_at"]) > timedelta(seconds=timeout_s)
            if row["status"] == "pending" and late:
                tx.execute(
                    "UPDATE canary_checks SET status = 'timeout'"
                    " WHERE id = ? AND status = 'pending'",
                    (check_id,),
                )
                row["status"] = "timeout"
        return row

    # Sticky assignment

    def assign(self, persona: str, handle: str, now: datetime) -> tuple[str, bool]:
        """The handle's shard for this persona: (shard id, True when newly assigned)."""
        with self.db.transaction() as tx:
            row = tx.one(
                "SELECT shard_id FROM user_assignments WHERE persona = ? AND handle = ?",
                (persona, handle),
            )
            if row is not None:
                return row["shard_id"], False
            shard = tx.one(
                "SELECT shard_id FROM persona_shards WHERE persona = ? AND state = 'active'"
                " ORDER BY active_users, shard_id LIMIT 1",
                (persona,),
            )
            if shard is None:
                raise Conflict(
                    f"persona '{persona}' has no active shard to assign '{handle}' to;"
                    " add a shard or switch one to active"
                )
            self._assign(tx, persona, handle, shard["shard_id"], iso(now))
        return shard["shard_id"], True
