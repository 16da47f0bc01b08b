"""Reading Messages' `chat.db`, read-only and in short transactions.

The relay reads through one `mode=ro` connection that it keeps between reads; each read is
one short transaction, so every read sees what Messages committed before it: only an open
transaction pins an old snapshot, and none outlives its read. `immutable=1` is never used,
as it would ignore the WAL where Messages writes first. Columns differ between macOS
releases, so every read checks which ones exist before naming them.

Why the connection is kept: a connection that opens chat.db while no other one has it open
creates `chat.db-wal` and `chat.db-shm` when they are missing and resets the shared memory;
run as root, every connection also hands both files back to chat.db's owner. Opened afresh
for each read while Messages did not hold chat.db open, the relay's own reads kept changing
those files, and the folder watch woke the next read for each change: an idle relay read
chat.db many times a second. A kept connection opens them once and, held open, also keeps
the last of Messages' connections from removing the WAL on close (the next opening would
create it again).

What a kept connection must not miss: it holds the files it opened, so it is dropped, and the
next read opens chat.db again, when chat.db, its WAL or its shared memory is no longer the
file it opened (Messages replaced one: another inode or device, or it is gone), and after any
error. A failed read raises ChatDBError; the next read tries again from scratch, so the relay
recovers by itself once chat.db is readable again. `check()` always opens a connection of its
own: it answers whether chat.db can be opened now (Full Disk Access may have been taken away
since the kept connection was opened). `close()` drops the kept connection at a drain.

Nothing else in the relay's process may open chat.db or the files beside it: closing any
descriptor of a file drops every POSIX lock the process holds on it, SQLite's included, and
Messages' next connection, finding nobody else there, would reset the shared memory under the
kept connection's map (a bus error, or reads of the wrong pages).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import struct
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Dict, List, Optional, Set, Tuple
from urllib.parse import quote

from edge_relay.body import BodyError, SummaryInfo, decode_attributed_body, decode_summary_info

log = logging.getLogger("edge_relay.chatdb")

APPLE_EPOCH = datetime(2001, 1, 1, tzinfo=timezone.utc)
# Dates are seconds since 2001 before macOS 10.13 and nanoseconds since; seconds stay far
# below this bound for centuries, nanoseconds pass it within a few minutes of 2001.
NANOSECOND_DATES_ABOVE = 10**11


class ChatDBError(Exception):
    """chat.db cannot be read (missing, no Full Disk Access, not Messages' schema)."""


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


# The files a connection to chat.db has open: the database, its WAL and its shared memory.
CONNECTION_FILES = ("", "-wal", "-shm")

FileIds = Tuple[Optional[Tuple[int, int]], ...]


class ChatDB:
    """Messages' database at `path`, read through one read-only connection kept between reads.

    Reads come from several threads (inbound, the send confirmation): they take turns.
    """

    def __init__(self, path: str, busy_timeout_s: float = 5.0):
        self.path = path
        self.busy_timeout_s = busy_timeout_s
        # Read transactions since the start, for /metrics: an idle relay reads once a poll.
        self.reads = 0
        self._lock = threading.Lock()
        self._conn: Optional[sqlite3.Connection] = None
        # (device, inode) of each of CONNECTION_FILES when the kept connection opened them.
        self._opened: FileIds = ()

    def _connect(self) -> sqlite3.Connection:
        uri = f"file:{quote(self.path)}?mode=ro"
        try:
            conn = sqlite3.connect(
                uri,
                uri=True,
                timeout=self.busy_timeout_s,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as error:
            raise ChatDBError(self._explain(error)) from None
        return conn

    def _explain(self, error: Exception) -> str:
        return (
            f"cannot read {self.path} ({error}); check that it exists and that the relay "
            "has Full Disk Access"
        )

    def _file_ids(self) -> FileIds:
        ids = []
        for suffix in CONNECTION_FILES:
            try:
                info = os.stat(self.path + suffix)
            except OSError:
                ids.append(None)
            else:
                ids.append((info.st_dev, info.st_ino))
        return tuple(ids)

    def _transaction(self, conn: sqlite3.Connection, work):
        """Runs `work(conn, columns)` inside one read transaction on `conn`."""
        conn.execute("BEGIN")
        columns = {row[1] for row in conn.execute("PRAGMA table_info(message)")}
        if "guid" not in columns:
            raise ChatDBError(f"{self.path} has no message table; is it Messages' chat.db?")
        result = work(conn, columns)
        conn.execute("COMMIT")
        return result

    def _read(self, work):
        """Runs `work(conn, columns)` in one read transaction on the kept connection."""
        with self._lock:
            self.reads += 1
            before = self._file_ids()
            if self._conn is not None and before != self._opened:
                self._drop()  # one of its files was replaced: it would read the old one
            fresh = self._conn is None
            if fresh:
                self._conn = self._connect()
            try:
                result = self._transaction(self._conn, work)
            except sqlite3.Error as error:
                self._drop()
                raise ChatDBError(self._explain(error)) from None
            except BaseException:
                self._drop()  # a read cut short leaves its transaction open: never keep that
                raise
            if fresh:
                self._keep(before)
            return result

    def _keep(self, before: FileIds) -> None:
        """Records the files a new connection holds, after its first read opened them.

        Its first read creates the WAL and the shared memory when they are missing; any other
        difference from before the read means a file was replaced meanwhile, and the
        connection may hold the old one: it is dropped, and the next read opens afresh.
        """
        after = self._file_ids()
        only_created = all(old in (None, new) for old, new in zip(before, after))
        if after[0] is None or not only_created:
            self._drop()
        else:
            self._opened = after

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._opened = ()

    def close(self) -> None:
        """Closes the kept connection (at a drain); a later read opens chat.db again."""
        with self._lock:
            self._drop()

    def max_rowid(self) -> int:
        """Highest ROWID of `message` (0 when empty): the point "now" starts from."""
        return self._read(
            lambda conn, _: conn.execute("SELECT COALESCE(MAX(ROWID), 0) FROM message").fetchone()[
                0
            ]
        )

    def scan(self, above: int) -> List[RowMark]:
        """Every row with ROWID above `above`, oldest first: ROWID, guid and revision only.

        Cheap enough to run on every change in the folder; full rows are read only for the
        rows the relay has not settled (`read_rows`).
        """

        def work(conn: sqlite3.Connection, columns: Set[str]) -> List[RowMark]:
            edited = "date_edited" if "date_edited" in columns else "0"
            retracted = "date_retracted" if "date_retracted" in columns else "0"
            sql = (
                f"SELECT ROWID, guid, COALESCE({edited}, 0), COALESCE({retracted}, 0) "
                "FROM message WHERE ROWID > ? ORDER BY ROWID"
            )
            return [RowMark(r, g, (e, t)) for r, g, e, t in conn.execute(sql, (above,))]

        return self._read(work)

    def read_rows(self, rowids: List[int]) -> List[MessageRow]:
        """The full rows with these ROWIDs (with chat, handles and attachments), oldest first."""
        return self._read(lambda conn, columns: _read_rows(conn, columns, rowids))

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
        """Whether chat.db can be opened and read now, with a sentence for /health.

        A connection of its own, closed at once: the kept one would go on reading files it
        opened before Full Disk Access was taken away.
        """

        def newest(conn: sqlite3.Connection, _: Set[str]) -> int:
            return conn.execute("SELECT COALESCE(MAX(ROWID), 0) FROM message").fetchone()[0]

        try:
            conn = self._connect()
            try:
                newest_rowid = self._transaction(conn, newest)
            finally:
                conn.close()
        except sqlite3.Error as error:
            return False, self._explain(error)
        except ChatDBError as error:
            return False, str(error)
        return True, f"readable, newest message row {newest_rowid}"


# Rows and events

# associated_message_type: 2000-2007 add a reaction, 3000-3007 remove the same one.
REACTIONS = ("love", "like", "dislike", "laugh", "emphasize", "question", "emoji", "sticker")
REACTION_ADD = 2000
REACTION_REMOVE = 3000
GROUP_STYLE = 43
# (item_type, group_action_type) of the rows Messages writes for a change of a group chat;
# a rename (item_type 2) carries the new name in group_title whatever its action type.
GROUP_CHANGES = {(1, 0): "member_added", (1, 1): "member_removed", (3, 0): "member_left"}
ROWS_PER_QUERY = 500


@dataclass(frozen=True)
class RowMark:
    """A row as the quick scan sees it; `revision` is (date_edited, date_retracted), 0 unset."""

    rowid: int
    guid: str
    revision: Tuple[int, int]


@dataclass
class MessageRow:
    """One `message` row with what the events need from the other tables."""

    rowid: int
    guid: str
    text: Optional[str]
    body: Optional[bytes]
    date: Optional[int]
    is_from_me: bool
    service: Optional[str]
    handle: Optional[str]
    chat_guid: Optional[str]
    chat_style: Optional[int]
    associated_type: int = 0
    associated_guid: Optional[str] = None
    associated_emoji: Optional[str] = None
    item_type: int = 0
    group_action_type: int = 0
    other_handle: Optional[str] = None
    group_title: Optional[str] = None
    date_edited: int = 0
    date_retracted: int = 0
    summary_info: Optional[bytes] = None
    attachments: List[Dict[str, object]] = field(default_factory=list)
    chat_rowid: Optional[int] = None
    # The other people in the chat (chat_handle_join), sorted: in a group, all but this account.
    participants: List[str] = field(default_factory=list)

    @property
    def kind(self) -> Optional[str]:
        """The event type this row makes, or None for rows that are not forwarded."""
        if REACTION_ADD <= self.associated_type < REACTION_ADD + len(REACTIONS):
            return "reaction"
        if REACTION_REMOVE <= self.associated_type < REACTION_REMOVE + len(REACTIONS):
            return "reaction"
        if self.associated_type:
            return None  # stickers placed on a bubble, app payloads: not part of the contract
        if self.item_type == 2 or (self.item_type, self.group_action_type) in GROUP_CHANGES:
            return "group_change"
        if self.item_type:
            return None  # group photo changes, "kept" audio notes and other notices
        return "message"

    @property
    def complete(self) -> bool:
        """Whether Messages has filed the row in its chat and named its sender yet."""
        return bool(self.chat_guid and (self.handle or self.kind == "group_change"))

    @property
    def is_group(self) -> bool:
        if self.chat_style is not None:
            return self.chat_style == GROUP_STYLE
        return ";+;" in (self.chat_guid or "")


def _read_rows(conn: sqlite3.Connection, columns: Set[str], rowids: List[int]) -> List[MessageRow]:
    def col(name: str, default: str = "NULL") -> str:
        return f"m.{name}" if name in columns else default

    chat_columns = {row[1] for row in conn.execute("PRAGMA table_info(chat)")}
    service = col("service")
    if "service_name" in chat_columns:
        service = f"COALESCE({service}, c.service_name)"
    style = "c.style" if "style" in chat_columns else "NULL"
    other = "o.id" if "other_handle" in columns else "NULL"
    other_join = (
        "LEFT JOIN handle o ON o.ROWID = m.other_handle" if "other_handle" in columns else ""
    )
    select = f"""
        SELECT m.ROWID, m.guid, {col("text")}, {col("attributedBody")}, {col("date")},
               {col("is_from_me", "0")}, {service}, h.id, c.guid, {style},
               COALESCE({col("associated_message_type", "0")}, 0),
               {col("associated_message_guid")}, {col("associated_message_emoji")},
               COALESCE({col("item_type", "0")}, 0), COALESCE({col("group_action_type", "0")}, 0),
               {other}, {col("group_title")},
               COALESCE({col("date_edited", "0")}, 0), COALESCE({col("date_retracted", "0")}, 0),
               {col("message_summary_info")}, c.ROWID
          FROM message m
          LEFT JOIN handle h ON h.ROWID = {col("handle_id", "0")}
          {other_join}
          LEFT JOIN chat c ON c.ROWID = (
                SELECT j.chat_id FROM chat_message_join j
                 WHERE j.message_id = m.ROWID ORDER BY j.chat_id LIMIT 1)
         WHERE m.ROWID IN ({{marks}})"""
    rows: List[MessageRow] = []
    for start in range(0, len(rowids), ROWS_PER_QUERY):
        chunk = rowids[start : start + ROWS_PER_QUERY]
        sql = select.format(marks=",".join("?" * len(chunk)))
        for r in conn.execute(sql, chunk):
            rows.append(
                MessageRow(
                    rowid=r[0],
                    guid=r[1],
                    text=r[2],
                    body=r[3],
                    date=r[4],
                    is_from_me=bool(r[5]),
                    service=r[6],
                    handle=r[7],
                    chat_guid=r[8],
                    chat_style=r[9],
                    associated_type=int(r[10]),
                    associated_guid=r[11],
                    associated_emoji=r[12],
                    item_type=int(r[13]),
                    group_action_type=int(r[14]),
                    other_handle=r[15],
                    group_title=r[16],
                    date_edited=int(r[17]),
                    date_retracted=int(r[18]),
                    summary_info=r[19],
                    chat_rowid=r[20],
                )
            )
    _attach(conn, rows)
    _participants(conn, rows)
    rows.sort(key=lambda row: row.rowid)
    return rows


def _attach(conn: sqlite3.Connection, rows: List[MessageRow]) -> None:
    """Fills in the attachments of message rows (older schemas may lack some columns)."""
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not {"attachment", "message_attachment_join"} <= tables or not rows:
        return
    columns = {row[1] for row in conn.execute("PRAGMA table_info(attachment)")}

    def col(name: str) -> str:
        return f"a.{name}" if name in columns else "NULL"

    by_rowid = {row.rowid: row for row in rows if row.kind == "message"}
    if not by_rowid:
        return
    marks = ",".join("?" * len(by_rowid))
    sql = f"""
        SELECT j.message_id, {col("guid")}, {col("filename")}, {col("mime_type")},
               {col("transfer_name")}, {col("total_bytes")}, {col("uti")}
          FROM message_attachment_join j JOIN attachment a ON a.ROWID = j.attachment_id
         WHERE j.message_id IN ({marks})
         ORDER BY j.message_id, a.ROWID"""
    for message_id, guid, filename, mime, name, size, uti in conn.execute(sql, list(by_rowid)):
        by_rowid[message_id].attachments.append(
            {
                "guid": guid,
                # Messages writes paths under the user's home as ~/Library/Messages/...
                "path": os.path.expanduser(filename) if filename else None,
                "mime_type": mime,
                "uti": uti,
                "transfer_name": name,
                "size": int(size or 0),
            }
        )


def _participants(conn: sqlite3.Connection, rows: List[MessageRow]) -> None:
    """Fills in the handles of each row's chat, so a group's members come with its messages."""
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    chats = sorted({row.chat_rowid for row in rows if row.chat_rowid is not None})
    if "chat_handle_join" not in tables or not chats:
        return
    members: Dict[int, List[str]] = {}
    sql = """
        SELECT DISTINCT j.chat_id, h.id
          FROM chat_handle_join j JOIN handle h ON h.ROWID = j.handle_id
         WHERE j.chat_id IN ({marks})
         ORDER BY j.chat_id, h.id"""
    for start in range(0, len(chats), ROWS_PER_QUERY):
        chunk = chats[start : start + ROWS_PER_QUERY]
        for chat_id, handle in conn.execute(sql.format(marks=",".join("?" * len(chunk))), chunk):
            members.setdefault(chat_id, []).append(handle)
    for row in rows:
        if row.chat_rowid is not None:
            row.participants = list(members.get(row.chat_rowid, []))


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _common(row: MessageRow, event_type: str, guid: str, date: Optional[int]) -> Dict[str, object]:
    return {
        "guid": guid,
        "type": event_type,
        "chat_guid": row.chat_guid,
        "handle": row.handle,
        # A date Messages left unset (0) is replaced by the time the row was read.
        "date": apple_date_to_iso(date) or _now_iso(),
        "is_from_me": row.is_from_me,
        "is_group": row.is_group,
        "participants": list(row.participants),
        "service": row.service or "unknown",
    }


def parse_target(associated_guid: Optional[str]) -> Tuple[Optional[str], int]:
    """The guid and part a reaction points at: `p:<part>/<guid>`, `bp:<guid>` or a bare guid."""
    if not associated_guid:
        return None, 0
    if associated_guid.startswith("p:") and "/" in associated_guid:
        part, _, guid = associated_guid[2:].partition("/")
        return guid, int(part) if part.isdigit() else 0
    if associated_guid.startswith("bp:"):
        return associated_guid[3:], 0
    return associated_guid, 0


def row_event(row: MessageRow) -> Optional[Dict[str, object]]:
    """The event a new row makes, or None when it is not forwarded."""
    kind = row.kind
    if kind == "message":
        event = _common(row, "message", row.guid, row.date)
        event["text"] = message_text(row.guid, row.text, row.body)
        event["attachments"] = list(row.attachments)
        return event
    if kind == "reaction":
        adding = row.associated_type < REACTION_REMOVE
        index = row.associated_type - (REACTION_ADD if adding else REACTION_REMOVE)
        target, part = parse_target(row.associated_guid)
        event = _common(row, "reaction", row.guid, row.date)
        event.update(
            {
                "action": "add" if adding else "remove",
                "reaction": REACTIONS[index],
                "emoji": row.associated_emoji,
                "target_guid": target,
                "target_part": part,
            }
        )
        return event
    if kind == "group_change":
        event = _common(row, "group_change", row.guid, row.date)
        if row.item_type == 2:
            event.update({"change": "renamed", "title": row.group_title, "member": None})
        else:
            change = GROUP_CHANGES[(row.item_type, row.group_action_type)]
            member = row.other_handle if change != "member_left" else row.handle
            event.update({"change": change, "member": member, "title": None})
        return event
    return None


def _summary(row: MessageRow) -> SummaryInfo:
    if not row.summary_info:
        return SummaryInfo({}, [])
    try:
        return decode_summary_info(row.summary_info)
    except BodyError as error:
        log.warning("message %s: message_summary_info not decoded (%s)", row.guid, error)
        return SummaryInfo({}, [])


def revision_of(row: MessageRow) -> Dict[str, object]:
    """What has been said so far about the edits and unsends of a row, to compare later."""
    summary = _summary(row)
    unsent = list(summary.retracted)
    if row.date_retracted and not unsent:
        unsent = [0]  # a retraction without a summary: the whole message, one part
    edits = {str(part): len(history) for part, history in summary.edits.items()}
    if row.date_edited and not edits and not unsent:
        edits = {"0": 2}  # edited, history not recorded: the original and the current text
    return {
        "edited": row.date_edited,
        "retracted": row.date_retracted,
        "unsent": unsent,
        "edits": edits,
    }


def is_unsent_whole(row: MessageRow) -> bool:
    """Whether the message was unsent before it was ever forwarded: nothing left to say."""
    return bool(revision_of(row)["unsent"]) and not message_text(row.guid, row.text, row.body)


def revision_events(
    row: MessageRow, before: Dict[str, object]
) -> Tuple[List[Dict[str, object]], Dict[str, object]]:
    """`edit` and `unsend` events for what changed since `before`, and the state after them.

    Their guids are built from the message guid and the change's date, so the same change
    read again after a restart has the same guid and the backend takes it once.
    """
    after = revision_of(row)
    events: List[Dict[str, object]] = []
    summary = _summary(row)
    before_edits = before.get("edits") or {}
    grown = [
        int(part)
        for part, count in after["edits"].items()
        if count > int(before_edits.get(part, 1))
    ]
    if grown:
        parts = []
        for part in sorted(grown):
            history = summary.edits.get(part)
            if history is None:  # no summary: only the current text is known
                history = [(message_text(row.guid, row.text, row.body), None)]
            entries = [
                {"text": text, "date": apple_date_to_iso(int(moment * 1e9)) if moment else None}
                for text, moment in history
            ]
            parts.append({"part": part, "history": entries})
        event = _common(row, "edit", f"{row.guid}:edit:{row.date_edited}", row.date_edited)
        event.update({"message_guid": row.guid, "text": message_text(row.guid, row.text, row.body)})
        event["parts"] = parts
        events.append(event)
    new_unsent = sorted(set(after["unsent"]) - set(before.get("unsent") or []))
    if new_unsent:
        stamp = row.date_retracted or row.date_edited
        event = _common(row, "unsend", f"{row.guid}:unsend:{stamp}", stamp)
        event.update({"message_guid": row.guid, "parts": new_unsent})
        events.append(event)
    return events, after
