"""A simulated Mac's Messages database (``~/Library/Messages/chat.db``).

The lab writes rows the way Messages does, so that the relay meets the same
tables, columns and values as on a Mac: chats with ``any;-;<handle>`` guids
(style 45 for a direct chat), group chats with ``any;+;chat<digits>`` guids
(style 43, their members in ``chat_handle_join``), handles per service, a
``chat_message_join`` row per message, dates in nanoseconds since 2001-01-01
UTC, and outgoing rows that appear unsent (``is_sent`` 0) and are marked sent a
moment later. An outgoing row in a group names no recipient (``handle_id`` 0).

The lab's writers (the launchd stand-in playing Messages.app, the carrier, the
``phone`` command) run as root, while the relay reads as the persona's user.
SQLite creates ``chat.db-wal`` and ``chat.db-shm`` as whoever opens the
database first, so every writer here makes them belong to the owner of
``chat.db`` first: otherwise the relay could no longer open the database.
"""

import os
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional

SCHEMA_PATH = Path(__file__).with_name("data") / "chat_db_schema.sql"

# Seconds between the Unix epoch and Apple's reference date, 2001-01-01 UTC.
APPLE_EPOCH_OFFSET = 978307200

SERVICE = "iMessage"
DIRECT_CHAT_STYLE = 45
GROUP_CHAT_STYLE = 43

# message.error of a send that failed (what Messages records when the
# recipient cannot be reached over iMessage).
SEND_FAILED_ERROR = 22


class ChatNotFound(LookupError):
    """The chat guid named by a send is not in this chat.db."""


def apple_now() -> int:
    """Now, in nanoseconds since 2001-01-01 UTC, as Messages stores dates."""
    return int((time.time() - APPLE_EPOCH_OFFSET) * 1_000_000_000)


def direct_chat_guid(handle: str) -> str:
    """The guid recent macOS gives a one-to-one chat with ``handle``."""
    return f"any;-;{handle}"


def _new_guid() -> str:
    return str(uuid.uuid4()).upper()


def _match_owner(db_path: Path) -> None:
    """Give the WAL and shared-memory files the owner of the database.

    Empty files are valid for SQLite: it initialises them on first use. Creating
    them ahead of a root connection keeps them out of root's hands.

    An existing file is never opened here: closing any descriptor of a file drops
    every POSIX lock this process holds on it, SQLite's among them. A process that
    also holds chat.db open (a relay under test, say) would look absent to the
    next connection, which then resets or removes the shared memory under the
    first one's map (a bus error, or reads of the wrong pages).
    """
    if os.geteuid() != 0:
        return
    owner = db_path.stat()
    for suffix in ("-wal", "-shm"):
        side = Path(str(db_path) + suffix)
        try:
            # A new file: no connection can hold a lock on it yet.
            fd = os.open(side, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        except FileExistsError:
            side_stat = os.lstat(side)
        else:
            side_stat = os.fstat(fd)
            os.close(fd)
        if (side_stat.st_uid, side_stat.st_gid) != (owner.st_uid, owner.st_gid):
            # The link itself if the user put one there, never what it points at.
            os.chown(side, owner.st_uid, owner.st_gid, follow_symlinks=False)


def connect(chat_db_path) -> sqlite3.Connection:
    """Open an existing chat.db for a short transaction.

    Raises FileNotFoundError with a sentence when there is no database, rather
    than letting SQLite create an empty one.
    """
    path = Path(chat_db_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no Messages database at {path}: sign the user in to iMessage first "
            "(edge-lab imessage signin), which creates it"
        )
    _match_owner(path)
    conn = sqlite3.connect(str(path), timeout=5.0, isolation_level=None)
    conn.row_factory = sqlite3.Row
    return conn


def create_chat_db(path, owner_uid: int, owner_gid: int) -> Path:
    """Create ``chat.db`` with Messages' own tables, in WAL mode, owned by the user.

    An existing database is left as it is: Messages keeps its history across
    sign-ins, and the lab's sign-in may be repeated.
    """
    path = Path(path)
    if path.exists():
        if not path.is_file():
            raise ValueError(f"{path} exists and is not a file: remove it or pick another path")
        return path
    path.parent.mkdir(parents=True, exist_ok=True)

    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.fchown(fd, owner_uid, owner_gid)
    finally:
        os.close(fd)

    conn = connect(path)
    try:
        conn.executescript(SCHEMA_PATH.read_text(encoding="utf-8"))
    finally:
        conn.close()
    return path


def _handle_rowid(conn: sqlite3.Connection, handle: str) -> int:
    row = conn.execute(
        "SELECT ROWID FROM handle WHERE id = ? AND service = ?", (handle, SERVICE)
    ).fetchone()
    if row:
        return row[0]
    cur = conn.execute(
        "INSERT INTO handle (id, country, service, uncanonicalized_id, person_centric_id) "
        "VALUES (?, 'us', ?, ?, NULL)",
        (handle, SERVICE, handle),
    )
    return cur.lastrowid


def _direct_chat(conn: sqlite3.Connection, handle: str, account_phone: str) -> int:
    """The chat with ``handle``, created with its handle and join when new."""
    guid = direct_chat_guid(handle)
    row = conn.execute("SELECT ROWID FROM chat WHERE guid = ?", (guid,)).fetchone()
    if row:
        return row[0]
    handle_id = _handle_rowid(conn, handle)
    cur = conn.execute(
        "INSERT INTO chat (guid, style, state, account_id, chat_identifier, service_name, "
        "account_login, last_addressed_handle) VALUES (?, ?, 3, ?, ?, ?, ?, ?)",
        (
            guid,
            DIRECT_CHAT_STYLE,
            _new_guid(),
            handle,
            SERVICE,
            f"P:{account_phone}",
            account_phone,
        ),
    )
    chat_id = cur.lastrowid
    conn.execute(
        "INSERT INTO chat_handle_join (chat_id, handle_id) VALUES (?, ?)", (chat_id, handle_id)
    )
    return chat_id


def add_group_chat(
    chat_db_path,
    *,
    members: List[str],
    account_phone: str,
    guid: Optional[str] = None,
    name: Optional[str] = None,
) -> str:
    """Create a group chat with ``members`` (the other people); returns its guid.

    Messages names a group ``chat`` and a long number, as the chat's identifier and room
    name; recent macOS writes its guid ``any;+;chat<digits>``, older releases
    ``iMessage;+;chat<digits>``: ``guid`` may give either shape.
    """
    if len(members) < 2:
        raise ValueError("a group chat needs at least two other members")
    guid = guid or f"any;+;chat{uuid.uuid4().int % 10**18:018d}"
    if ";+;chat" not in guid:
        raise ValueError(f"group chat guid {guid!r} is not of the form <service>;+;chat<digits>")
    identifier = guid.split(";+;", 1)[1]
    conn = connect(chat_db_path)
    try:
        conn.execute("BEGIN IMMEDIATE")
        chat_id = conn.execute(
            "INSERT INTO chat (guid, style, state, account_id, chat_identifier, service_name, "
            "room_name, account_login, display_name, group_id) "
            "VALUES (?, ?, 3, ?, ?, ?, ?, ?, ?, ?)",
            (
                guid,
                GROUP_CHAT_STYLE,
                _new_guid(),
                identifier,
                SERVICE,
                identifier,
                f"P:{account_phone}",
                name or "",
                _new_guid(),
            ),
        ).lastrowid
        for member in members:
            conn.execute(
                "INSERT INTO chat_handle_join (chat_id, handle_id) VALUES (?, ?)",
                (chat_id, _handle_rowid(conn, member)),
            )
        conn.execute("COMMIT")
        return guid
    finally:
        conn.close()


def _insert_message(conn: sqlite3.Connection, chat_id: int, values: Dict[str, Any]) -> str:
    guid = _new_guid()
    values = dict(values, guid=guid, service=SERVICE)
    columns = ", ".join(values)
    marks = ", ".join("?" for _ in values)
    cur = conn.execute(f"INSERT INTO message ({columns}) VALUES ({marks})", tuple(values.values()))
    conn.execute(
        "INSERT INTO chat_message_join (chat_id, message_id, message_date) VALUES (?, ?, ?)",
        (chat_id, cur.lastrowid, values["date"]),
    )
    return guid


def add_incoming(
    chat_db_path,
    *,
    sender: str,
    text: Optional[str],
    account_phone: str,
    attributed_body: Optional[bytes] = None,
    chat_guid: Optional[str] = None,
) -> str:
    """Write a message received from ``sender``; returns its guid.

    With ``attributed_body`` the text column stays NULL and the body lives in
    ``attributedBody`` only, as Messages writes many rows on recent macOS. With
    ``chat_guid`` the message is said in that existing chat (a group the sender
    is a member of) rather than in the direct chat with the sender.
    """
    if text is None and attributed_body is None:
        raise ValueError("an incoming message needs text or an attributed body")
    conn = connect(chat_db_path)
    try:
        conn.execute("BEGIN IMMEDIATE")
        if chat_guid is None:
            chat_id = _direct_chat(conn, sender, account_phone)
        else:
            row = conn.execute(
                "SELECT c.ROWID FROM chat c JOIN chat_handle_join j ON j.chat_id = c.ROWID "
                "JOIN handle h ON h.ROWID = j.handle_id WHERE c.guid = ? AND h.id = ?",
                (chat_guid, sender),
            ).fetchone()
            if row is None:
                conn.execute("ROLLBACK")
                raise ChatNotFound(f"{chat_guid} (with {sender} as a member)")
            chat_id = row[0]
        now = apple_now()
        guid = _insert_message(
            conn,
            chat_id,
            {
                "text": None if attributed_body is not None else text,
                "attributedBody": attributed_body,
                "handle_id": _handle_rowid(conn, sender),
                "account": f"p:{account_phone}",
                "account_guid": None,
                "destination_caller_id": account_phone,
                "date": now,
                "date_read": 0,
                "date_delivered": 0,
                "is_from_me": 0,
                "is_delivered": 1,
                "is_finished": 1,
                "is_read": 0,
                "is_sent": 0,
            },
        )
        conn.execute("COMMIT")
        return guid
    finally:
        conn.close()


def add_outgoing(chat_db_path, *, target: str, mode: str, text: str, account_phone: str) -> str:
    """Write a message the user sends, not yet sent (``is_sent`` 0); returns its guid.

    ``mode`` "chat": ``target`` is a chat guid that must exist (ChatNotFound
    otherwise). ``mode`` "handle": ``target`` is a handle, and the direct chat
    with it is created when new.
    """
    if mode not in ("chat", "handle"):
        raise ValueError(f"send mode {mode!r} is not 'chat' or 'handle'")
    conn = connect(chat_db_path)
    try:
        conn.execute("BEGIN IMMEDIATE")
        if mode == "chat":
            row = conn.execute("SELECT ROWID FROM chat WHERE guid = ?", (target,)).fetchone()
            if row is None:
                conn.execute("ROLLBACK")
                raise ChatNotFound(target)
            chat_id = row[0]
        else:
            chat_id = _direct_chat(conn, target, account_phone)
        style = conn.execute("SELECT style FROM chat WHERE ROWID = ?", (chat_id,)).fetchone()[0]
        handles = _chat_handle_ids(conn, chat_id)
        group = style == GROUP_CHAT_STYLE or len(handles) != 1
        guid = _insert_message(
            conn,
            chat_id,
            {
                "text": text,
                # A group send has no single recipient, however few members are left:
                # Messages leaves it 0.
                "handle_id": 0 if group else handles[0],
                "account": f"p:{account_phone}",
                "destination_caller_id": account_phone,
                "date": apple_now(),
                "date_read": 0,
                "date_delivered": 0,
                "is_from_me": 1,
                "is_delivered": 0,
                "is_finished": 1,
                "is_read": 1,
                "is_sent": 0,
            },
        )
        conn.execute("COMMIT")
        return guid
    finally:
        conn.close()


def _chat_handle_ids(conn: sqlite3.Connection, chat_id: int) -> List[int]:
    rows = conn.execute(
        "SELECT handle_id FROM chat_handle_join WHERE chat_id = ? ORDER BY handle_id", (chat_id,)
    )
    return [r[0] for r in rows]


def mark_sent(chat_db_path, guid: str, *, error: int = 0) -> None:
    """Record the outcome of an outgoing message, as Messages does after a send.

    ``error`` 0: sent and delivered. Otherwise the row keeps ``is_sent`` 0 and
    carries the error code, which is how a failed send looks in chat.db.
    """
    conn = connect(chat_db_path)
    try:
        if error:
            cur = conn.execute(
                "UPDATE message SET error = ?, is_sent = 0 WHERE guid = ? AND is_from_me = 1",
                (error, guid),
            )
        else:
            cur = conn.execute(
                "UPDATE message SET is_sent = 1, is_delivered = 1, date_delivered = ? "
                "WHERE guid = ? AND is_from_me = 1",
                (apple_now(), guid),
            )
        if cur.rowcount != 1:
            raise LookupError(f"no outgoing message with guid {guid} in {chat_db_path}")
    finally:
        conn.close()


def chat_exists(chat_db_path, chat_guid: str) -> bool:
    conn = connect(chat_db_path)
    try:
        row = conn.execute("SELECT 1 FROM chat WHERE guid = ?", (chat_guid,)).fetchone()
        return row is not None
    finally:
        conn.close()


def chat_handles(chat_db_path, chat_guid: str) -> List[str]:
    """The handles taking part in a chat (empty when the chat is unknown)."""
    conn = connect(chat_db_path)
    try:
        rows = conn.execute(
            "SELECT h.id FROM chat c JOIN chat_handle_join j ON j.chat_id = c.ROWID "
            "JOIN handle h ON h.ROWID = j.handle_id WHERE c.guid = ? ORDER BY h.id",
            (chat_guid,),
        )
        return [r[0] for r in rows]
    finally:
        conn.close()


_READ_COLUMNS = (
    "SELECT m.ROWID AS rowid, m.guid, m.text, m.attributedBody AS attributed_body, "
    "m.is_from_me, m.is_sent, m.is_delivered, m.error, m.date, m.date_delivered, "
    "m.account, m.service, h.id AS handle, c.guid AS chat_guid "
    "FROM message m LEFT JOIN handle h ON h.ROWID = m.handle_id "
    "LEFT JOIN chat_message_join j ON j.message_id = m.ROWID "
    "LEFT JOIN chat c ON c.ROWID = j.chat_id "
)


def _read(chat_db_path, where: str, args: tuple) -> List[Dict[str, Any]]:
    conn = connect(chat_db_path)
    try:
        rows = conn.execute(_READ_COLUMNS + where + " ORDER BY m.ROWID", args).fetchall()
        return [dict(r) for r in rows]
    finally:
        conn.close()


def outgoing_after(chat_db_path, rowid: int) -> List[Dict[str, Any]]:
    """Outgoing messages with a ROWID above ``rowid``, oldest first."""
    return _read(chat_db_path, "WHERE m.is_from_me = 1 AND m.ROWID > ?", (rowid,))


def incoming_after(chat_db_path, rowid: int) -> List[Dict[str, Any]]:
    """Incoming messages with a ROWID above ``rowid``, oldest first."""
    return _read(chat_db_path, "WHERE m.is_from_me = 0 AND m.ROWID > ?", (rowid,))


def message(chat_db_path, guid: str) -> Optional[Dict[str, Any]]:
    """One message by guid, or None."""
    rows = _read(chat_db_path, "WHERE m.guid = ?", (guid,))
    return rows[0] if rows else None


def max_rowid(chat_db_path) -> int:
    conn = connect(chat_db_path)
    try:
        return conn.execute("SELECT COALESCE(MAX(ROWID), 0) FROM message").fetchone()[0]
    finally:
        conn.close()
