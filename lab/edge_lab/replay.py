"""Replaying the ``message`` rows of another Messages database into a lab account's chat.db.

Someone holding a copy of a real ``chat.db`` (of any macOS release) can watch a lab relay
decode and forward its rows. Each row is written into the account's chat.db as a new one, the
way Messages writes a message on arrival:

- ROWIDs are fresh, above every row the database ever held (``message`` is AUTOINCREMENT),
  so a relay that started from "now" takes the rows as new.
- Columns both databases have are copied; columns only the lab's newer schema has keep their
  defaults; columns the lab does not know are left behind.
- guids are kept, so reactions, edits, replies and threads still name the rows they named
  (``associated_message_guid``, ``reply_to_guid``, ``thread_originator_guid``). A row whose
  guid the account's chat.db already holds is skipped and reported, never duplicated.
- Each row's handle and chat (with a group's members in ``chat_handle_join``) are found by
  (id, service) and by guid, or created; ``handle_id`` and ``other_handle`` are renumbered to
  the lab's handles.
- An attachment's file found beside the source database, where a copy of the Messages folder
  keeps it (``Attachments/...``), is copied into the account's Messages folder. Otherwise the
  attachment is recorded as Messages records one not downloaded yet (transfer state "waiting
  for accept", no file), with its name, type and size.
- Dates are kept, old ones included, unless ``now`` is asked for: then each row is dated at
  the replay and its other dates (delivered, read, edited ...) move by as much.

All of it is one transaction: on any failure the account's chat.db is left as it was, and the
attachment files copied so far are removed again.
"""

import contextlib
import os
import shutil
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Dict, List, Optional, Tuple
from urllib.parse import quote

from . import messages
from .layout import BadInput, LabError

# Dates are seconds since 2001 before macOS 10.13 and nanoseconds since; seconds stay far
# below this bound for centuries.
NANOSECOND_DATES_ABOVE = 10**11
# IMFileTransfer states, as Messages stores them in attachment.transfer_state.
TRANSFER_WAITING_FOR_ACCEPT = 0
TRANSFER_FINISHED = 5
# attachment.filename names a file in the user's Messages folder as ~/Library/Messages/...
MESSAGES_FOLDER = "Library/Messages/"


@dataclass
class Replayed:
    """What a replay added to the account's chat.db."""

    rows: int = 0
    chats: int = 0
    handles: int = 0
    attachments: int = 0
    files: int = 0
    skipped: List[str] = field(default_factory=list)
    # The source's highest ROWID read: the --since-rowid that continues after this replay.
    last_rowid: int = 0


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _columns(conn: sqlite3.Connection, table: str) -> List[str]:
    return [row[1] for row in conn.execute(f"PRAGMA table_info({_quote(table)})")]


def _tables(conn: sqlite3.Connection) -> List[str]:
    return [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]


def open_source(path) -> sqlite3.Connection:
    """The source database, read-only; BadInput when it is not a Messages database."""
    path = Path(path)
    if not path.is_file():
        what = "does not exist" if not path.exists() else "is not a file"
        raise BadInput(
            f"source database {path} {what}: give the path of a copy of a Messages chat.db"
        )
    uri = f"file:{quote(str(path.resolve()))}?mode=ro"
    conn = sqlite3.connect(uri, uri=True, timeout=5.0, isolation_level=None)
    conn.row_factory = sqlite3.Row
    try:
        tables = _tables(conn)
        columns = _columns(conn, "message") if "message" in tables else []
    except sqlite3.OperationalError as error:
        conn.close()
        raise BadInput(
            f"cannot read {path} ({error}): check it is readable, and copy its chat.db-wal "
            "beside it if it has one"
        ) from None
    except sqlite3.DatabaseError as error:
        conn.close()
        raise BadInput(
            f"{path} is not an SQLite database ({error}): give a copy of a Messages chat.db"
        ) from None
    if "message" not in tables:
        conn.close()
        raise BadInput(f"{path} has no message table: it is not a Messages chat.db")
    if "guid" not in columns:
        conn.close()
        raise BadInput(f"{path} has a message table without guids: it is not a Messages chat.db")
    return conn


def _nanoseconds(value: int) -> int:
    return value if abs(value) > NANOSECOND_DATES_ABOVE else value * 1_000_000_000


def messages_path(filename: Optional[str]) -> Optional[PurePosixPath]:
    """Where ``filename`` lies inside a Messages folder (``Attachments/...``), if it does."""
    if not filename:
        return None
    marker = filename.find(MESSAGES_FOLDER)
    if marker < 0:
        return None
    relative = PurePosixPath(filename[marker + len(MESSAGES_FOLDER) :])
    # A file of its own in a subfolder: never chat.db itself, never outside the folder.
    if relative.is_absolute() or ".." in relative.parts or len(relative.parts) < 2:
        return None
    return relative


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


class _Replay:
    """One replay: the source's rows written into the lab's database, in its transaction."""

    def __init__(self, source, lab, source_folder: Path, lab_folder: Path, owner, now: bool):
        self.source = source
        self.lab = lab
        self.source_folder = source_folder
        self.lab_folder = lab_folder
        self.owner: Tuple[int, int] = owner
        self.now = now
        self.source_tables = set(_tables(source))
        self.lab_columns = {table: set(_columns(lab, table)) for table in _tables(lab)}
        self.shared = {
            table: [
                column
                for column in _columns(source, table)
                if column in self.lab_columns.get(table, ()) and column.lower() != "rowid"
            ]
            for table in self.source_tables
        }
        self.handles: Dict[int, int] = {}
        self.chats: Dict[int, Optional[int]] = {}
        self.attachments: Dict[int, Optional[int]] = {}
        self.copied: List[Path] = []
        self.made_folders: List[Path] = []
        self.last_date = 0
        self.result = Replayed()

    # ------------------------------------------------------------ reading and writing

    def _source_rows(self, table: str, sql: str, args: tuple) -> List[sqlite3.Row]:
        if table not in self.source_tables:
            return []
        return self.source.execute(sql, args).fetchall()

    def _source_row(self, table: str, rowid: int) -> Optional[sqlite3.Row]:
        rows = self._source_rows(table, f"SELECT * FROM {_quote(table)} WHERE ROWID = ?", (rowid,))
        return rows[0] if rows else None

    def _lab_rowid(self, sql: str, args: tuple) -> Optional[int]:
        row = self.lab.execute(sql, args).fetchone()
        return row[0] if row else None

    def _insert(self, table: str, values: Dict[str, object]) -> int:
        columns = ", ".join(_quote(column) for column in values)
        marks = ", ".join("?" for _ in values)
        sql = f"INSERT INTO {_quote(table)} ({columns}) VALUES ({marks})"
        return self.lab.execute(sql, tuple(values.values())).lastrowid

    def _copy_of(self, table: str, row: sqlite3.Row) -> Dict[str, object]:
        return {column: row[column] for column in self.shared[table]}

    # ------------------------------------------------------------ the rows

    def rows(self, since_rowid: int, limit: Optional[int]):
        columns = "".join(", " + _quote(column) for column in self.shared["message"])
        sql = (
            f"SELECT ROWID AS source_rowid{columns} FROM message WHERE ROWID > ? "
            "ORDER BY ROWID LIMIT ?"
        )
        return self.source.execute(sql, (since_rowid, -1 if limit is None else limit))

    def copy(self, row: sqlite3.Row) -> None:
        self.result.last_rowid = row["source_rowid"]
        if self._lab_rowid("SELECT ROWID FROM message WHERE guid = ?", (row["guid"],)):
            self.result.skipped.append(row["guid"])
            return

        values = self._copy_of("message", row)
        for column in ("handle_id", "other_handle"):
            if values.get(column):
                values[column] = self._handle(values[column])
        if self.now:
            self._redate(values)
        message_id = self._insert("message", values)
        self.result.rows += 1

        joins = self._source_rows(
            "chat_message_join",
            "SELECT chat_id FROM chat_message_join WHERE message_id = ? ORDER BY chat_id",
            (row["source_rowid"],),
        )
        for join in joins:
            chat_id = self._chat(join["chat_id"])
            if chat_id is None:
                continue
            filed = {"chat_id": chat_id, "message_id": message_id}
            if "message_date" in self.lab_columns["chat_message_join"]:
                filed["message_date"] = values.get("date") or 0
            self._insert("chat_message_join", filed)

        parts = self._source_rows(
            "message_attachment_join",
            "SELECT attachment_id FROM message_attachment_join WHERE message_id = ? "
            "ORDER BY attachment_id",
            (row["source_rowid"],),
        )
        for part in parts:
            attachment_id = self._attachment(part["attachment_id"])
            if attachment_id is not None:
                self.lab.execute(
                    "INSERT OR IGNORE INTO message_attachment_join (message_id, attachment_id) "
                    "VALUES (?, ?)",
                    (message_id, attachment_id),
                )

    def _redate(self, values: Dict[str, object]) -> None:
        """Dates the row now (each row after the one before), its other dates along with it."""
        if "date" not in self.lab_columns["message"]:
            return
        moment = max(messages.apple_now(), self.last_date + 1)
        self.last_date = moment
        original = values.get("date")
        values["date"] = moment
        if not original:
            return
        shift = moment - _nanoseconds(int(original))
        for column, value in values.items():
            if column.startswith("date_") and value:
                values[column] = _nanoseconds(int(value)) + shift

    def _handle(self, source_id: int) -> int:
        """The lab's handle for a source handle (0 when the source names none)."""
        if source_id in self.handles:
            return self.handles[source_id]
        row = self._source_row("handle", source_id)
        lab_id = 0
        if row is not None and row["id"]:
            values = self._copy_of("handle", row)
            values["service"] = values.get("service") or messages.SERVICE
            lab_id = self._lab_rowid(
                "SELECT ROWID FROM handle WHERE id = ? AND service = ?",
                (values["id"], values["service"]),
            )
            if lab_id is None:
                lab_id = self._insert("handle", values)
                self.result.handles += 1
        self.handles[source_id] = lab_id
        return lab_id

    def _chat(self, source_id: int) -> Optional[int]:
        """The lab's chat for a source chat, with the source's members added to it."""
        if source_id in self.chats:
            return self.chats[source_id]
        row = self._source_row("chat", source_id)
        lab_id = None
        if row is not None and row["guid"]:
            lab_id = self._lab_rowid("SELECT ROWID FROM chat WHERE guid = ?", (row["guid"],))
            if lab_id is None:
                lab_id = self._insert("chat", self._copy_of("chat", row))
                self.result.chats += 1
            members = self._source_rows(
                "chat_handle_join",
                "SELECT handle_id FROM chat_handle_join WHERE chat_id = ? ORDER BY handle_id",
                (source_id,),
            )
            for member in members:
                handle_id = self._handle(member["handle_id"])
                if handle_id:
                    self.lab.execute(
                        "INSERT OR IGNORE INTO chat_handle_join (chat_id, handle_id) VALUES (?, ?)",
                        (lab_id, handle_id),
                    )
        self.chats[source_id] = lab_id
        return lab_id

    def _attachment(self, source_id: int) -> Optional[int]:
        if source_id in self.attachments:
            return self.attachments[source_id]
        row = self._source_row("attachment", source_id)
        lab_id = None
        if row is not None and row["guid"]:
            lab_id = self._lab_rowid("SELECT ROWID FROM attachment WHERE guid = ?", (row["guid"],))
            if lab_id is None:
                lab_id = self._insert("attachment", self._new_attachment(row))
                self.result.attachments += 1
        self.attachments[source_id] = lab_id
        return lab_id

    def _new_attachment(self, row: sqlite3.Row) -> Dict[str, object]:
        values = self._copy_of("attachment", row)
        columns = self.lab_columns["attachment"]
        if "original_guid" in columns and not values.get("original_guid"):
            # Older releases have no original_guid; Messages fills it with the guid.
            values["original_guid"] = row["guid"]
        relative = messages_path(values.get("filename"))
        if relative is not None:
            values["filename"] = f"~/{MESSAGES_FOLDER}{relative}"
        if relative is not None and self._copy_file(relative):
            state = TRANSFER_FINISHED
            self.result.files += 1
        else:
            state = TRANSFER_WAITING_FOR_ACCEPT
        if "transfer_state" in columns:
            values["transfer_state"] = state
        return values

    # ------------------------------------------------------------ attachment files

    def _copy_file(self, relative: PurePosixPath) -> bool:
        """Copies the file beside the source into the account's folder; False when absent."""
        source = self.source_folder / relative
        if not source.is_file() or not _inside(source, self.source_folder):
            return False
        target = self.lab_folder / relative
        missing = []
        folder = target.parent
        while not folder.exists():
            missing.append(folder)
            folder = folder.parent
        if not _inside(folder, self.lab_folder):
            raise LabError(f"{folder} leads out of {self.lab_folder}; remove it and replay again")
        for folder in reversed(missing):
            folder.mkdir(mode=0o700)
            self.made_folders.append(folder)
            os.chown(folder, *self.owner)
        if target.exists():
            return True  # the account has that file already
        shutil.copyfile(source, target)
        self.copied.append(target)
        os.chown(target, *self.owner)
        os.chmod(target, 0o644)
        return True

    def undo_files(self) -> None:
        for path in reversed(self.copied):
            path.unlink(missing_ok=True)
        for folder in reversed(self.made_folders):
            with contextlib.suppress(OSError):
                folder.rmdir()  # not empty: it holds files of the account's own


def replay(
    chat_db,
    source_db,
    *,
    since_rowid: int = 0,
    limit: Optional[int] = None,
    now: bool = False,
) -> Replayed:
    """Copies the source's message rows above ``since_rowid`` (at most ``limit``) into chat_db.

    BadInput for a source that is not a Messages database or a bound out of range, LabError
    for a replay that failed (the account's chat.db is then unchanged).
    """
    if since_rowid < 0:
        raise BadInput(f"--since-rowid {since_rowid} is negative: give a source ROWID, 0 or more")
    if limit is not None and limit < 1:
        raise BadInput(f"--limit {limit} is not a number of rows: give 1 or more")
    source = open_source(source_db)
    try:
        lab = messages.connect(chat_db)
    except FileNotFoundError as error:
        source.close()
        raise LabError(str(error)) from None

    owner = Path(chat_db).stat()
    work = _Replay(
        source,
        lab,
        Path(source_db).resolve().parent,
        Path(chat_db).parent,
        (owner.st_uid, owner.st_gid),
        now,
    )
    try:
        source.execute("BEGIN")
        lab.execute("BEGIN IMMEDIATE")
        for row in work.rows(since_rowid, limit):
            work.copy(row)
        lab.execute("COMMIT")
    except BaseException as error:
        if lab.in_transaction:
            lab.execute("ROLLBACK")
        work.undo_files()
        if isinstance(error, (sqlite3.Error, OSError)):
            raise LabError(
                f"replaying {source_db} into {chat_db} failed ({error}); "
                "the account's chat.db is unchanged"
            ) from None
        raise
    finally:
        source.close()
        lab.close()
    return work.result
