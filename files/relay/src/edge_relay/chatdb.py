"""Reading Messages' `chat.db`, read-only and in short transactions.

Each read opens the file with a `mode=ro` URI, reads inside one transaction and closes it:
a connection kept open would stay on an old snapshot, and `immutable=1` would ignore the WAL
where Messages writes first. Columns differ between macOS releases, so every read checks which
ones exist before naming them.
"""

from __future__ import annotations

import logging
import sqlite3
import struct
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Dict, List, Optional, Set, Tuple
from urllib.parse import quote

from edge_relay.body import BodyError, decode_attributed_body

log = logging.getLogger("edge_relay.chatdb")

APPLE_EPOCH = datetime(2001, 1, 1, tzinfo=timezone.utc)
# Dates are seconds since 2001 before macOS 10.13 and nanoseconds since; seconds stay far
# below this bound for centuries, nanoseconds pass it within a few minutes of 2001.
NANOSECOND_DATES_ABOVE = 10**11


class ChatDBError(Exception):
    """chat.db cannot be read (missing, no Full Disk Access, not Messages' schema)."""


@dataclass(frozen=True)
class InboundRow:
    """One new row of `message`; `event` is None when it is not forwarded (own, reaction)."""

    rowid: int
    event: Optional[Dict[str, object]]

    @property
    def complete(self) -> bool:
        """Whether the event names its chat and handle (Messages may write the join later)."""
        return self.event is None or bool(self.event["chat_guid"] and self.event["handle"])


@dataclass(frozen=True)
class OutgoingRow:
    rowid: int
    guid: str
    is_sent: bool
    error: int


def apple_date_to_iso(value: Optional[int]) -> Optional[str]:
    """ISO 8601 UTC text of a Messages date, or None when it is unset (0 or NULL)."""
    if not value:
        return None
    seconds = value / 1e9 if abs(value) > NANOSECOND_DATES_ABOVE else float(value)
    moment = APPLE_EPOCH + timedelta(seconds=seconds)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _scan_archived_string(blob: bytes) -> Optional[str]:
    """Last resort for a body the decoder refused: the first string after 'NSString'.

    In a typedstream a string value is '+' followed by its length (one byte, or 0x81 and
    two little-endian bytes, or 0x82 and four) and its UTF-8 bytes.
    """
    start = blob.find(b"NSString")
    if start < 0:
        return None
    plus = blob.find(b"+", start + len(b"NSString"))
    if plus < 0 or plus + 1 >= len(blob):
        return None
    head = blob[plus + 1]
    offset = plus + 2
    if head == 0x81:
        (length,) = struct.unpack_from("<H", blob, offset)
        offset += 2
    elif head == 0x82:
        (length,) = struct.unpack_from("<I", blob, offset)
        offset += 4
    else:
        length = head
    raw = blob[offset : offset + length]
    if len(raw) != length:
        return None
    return raw.decode("utf-8", errors="replace")


def message_text(guid: str, text: Optional[str], body: Optional[bytes]) -> Optional[str]:
    """The text of a row: `text`, else the string archived in `attributedBody`.

    None when neither can be read (the contract's "no body"); a damaged body is logged by guid
    only, never with its content.
    """
    if text is not None:
        return text
    if not body:
        return None
    try:
        return decode_attributed_body(body)
    except BodyError as error:
        try:
            scanned = _scan_archived_string(bytes(body))
        except (struct.error, IndexError):
            scanned = None
        outcome = "recovered by a byte scan" if scanned is not None else "sent without text"
        log.warning("message %s: attributedBody not decoded (%s); %s", guid, error, outcome)
        return scanned


class ChatDB:
    """Messages' database at `path`, opened afresh for every read."""

    def __init__(self, path: str, busy_timeout_s: float = 5.0):
        self.path = path
        self.busy_timeout_s = busy_timeout_s

    def _connect(self) -> sqlite3.Connection:
        uri = f"file:{quote(self.path)}?mode=ro"
        try:
            conn = sqlite3.connect(uri, uri=True, timeout=self.busy_timeout_s, isolation_level=None)
        except sqlite3.Error as error:
            raise ChatDBError(self._explain(error)) from None
        return conn

    def _explain(self, error: Exception) -> str:
        return (
            f"cannot read {self.path} ({error}); check that it exists and that the relay "
            "has Full Disk Access"
        )

    def _read(self, work):
        """Runs `work(conn, columns)` inside one read transaction on a fresh connection."""
        conn = self._connect()
        try:
            conn.execute("BEGIN")
            columns = {row[1] for row in conn.execute("PRAGMA table_info(message)")}
            if "guid" not in columns:
                raise ChatDBError(f"{self.path} has no message table; is it Messages' chat.db?")
            result = work(conn, columns)
            conn.execute("COMMIT")
            return result
        except sqlite3.Error as error:
            raise ChatDBError(self._explain(error)) from None
        finally:
            conn.close()

    def max_rowid(self) -> int:
        """Highest ROWID of `message` (0 when empty): the point "now" starts from."""
        return self._read(
            lambda conn, _: conn.execute("SELECT COALESCE(MAX(ROWID), 0) FROM message").fetchone()[
                0
            ]
        )

    def read_after(self, rowid: int, limit: int) -> List[InboundRow]:
        """Rows with ROWID above `rowid`, oldest first, at most `limit` of them."""
        return self._read(lambda conn, columns: self._rows_after(conn, columns, rowid, limit))

    @staticmethod
    def _rows_after(
        conn: sqlite3.Connection, columns: Set[str], rowid: int, limit: int
    ) -> List[InboundRow]:
        def col(name: str, default: str = "NULL") -> str:
            return f"m.{name}" if name in columns else default

        chat_columns = {row[1] for row in conn.execute("PRAGMA table_info(chat)")}
        service = col("service")
        if "service_name" in chat_columns:
            service = f"COALESCE({service}, c.service_name)"
        sql = f"""
            SELECT m.ROWID, m.guid, {col("text")}, {col("attributedBody")},
                   {col("date")}, {col("is_from_me", "0")},
                   {col("associated_message_type", "0")}, {col("item_type", "0")},
                   {service}, h.id,
                   c.guid
              FROM message m
              LEFT JOIN handle h ON h.ROWID = {col("handle_id", "0")}
              LEFT JOIN chat c ON c.ROWID = (
                    SELECT j.chat_id FROM chat_message_join j
                     WHERE j.message_id = m.ROWID ORDER BY j.chat_id LIMIT 1)
             WHERE m.ROWID > ?
             ORDER BY m.ROWID
             LIMIT ?"""
        rows = []
        for (
            row_id,
            guid,
            text,
            body,
            date,
            from_me,
            assoc_type,
            item_type,
            service,
            handle,
            chat_guid,
        ) in conn.execute(sql, (rowid, limit)):
            # Own messages, reactions and group changes (item_type) are not messages to answer.
            if from_me or assoc_type or item_type:
                rows.append(InboundRow(row_id, None))
                continue
            event = {
                "guid": guid,
                "type": "message",
                "chat_guid": chat_guid,
                "handle": handle,
                "text": message_text(guid, text, body),
                # A date Messages left unset (0) is replaced by the time the row was read.
                "date": apple_date_to_iso(date)
                or datetime.now(timezone.utc)
                .isoformat(timespec="milliseconds")
                .replace("+00:00", "Z"),
                "is_from_me": False,
                "service": service or "unknown",
            }
            rows.append(InboundRow(row_id, event))
        return rows

    def outgoing_after(self, rowid: int, mode: str, target: str) -> List[OutgoingRow]:
        """Own rows above `rowid` in the chat `target` (a chat guid or a handle), oldest first."""

        def work(conn: sqlite3.Connection, columns: Set[str]) -> List[OutgoingRow]:
            is_sent = "m.is_sent" if "is_sent" in columns else "0"
            error = "m.error" if "error" in columns else "0"
            if mode == "chat":
                where = "c.guid = ?"
                params: Tuple[object, ...] = (rowid, target)
            else:
                # A direct chat is named after the other party; the row also points at it.
                where = "(c.chat_identifier = ? OR h.id = ?)"
                params = (rowid, target, target)
            sql = f"""
                SELECT DISTINCT m.ROWID, m.guid, {is_sent}, {error}
                  FROM message m
                  LEFT JOIN chat_message_join j ON j.message_id = m.ROWID
                  LEFT JOIN chat c ON c.ROWID = j.chat_id
                  LEFT JOIN handle h ON h.ROWID = m.handle_id
                 WHERE m.is_from_me = 1 AND m.ROWID > ? AND {where}
                 ORDER BY m.ROWID"""
            return [
                OutgoingRow(r, g, bool(s), int(e or 0)) for r, g, s, e in conn.execute(sql, params)
            ]

        return self._read(work)

    def check(self) -> Tuple[bool, str]:
        """Whether chat.db can be read now, with a sentence for /health."""
        try:
            newest = self.max_rowid()
        except ChatDBError as error:
            return False, str(error)
        return True, f"readable, newest message row {newest}"
