"""Reading chat.db: attributedBody, dates, read-only short transactions, older schemas, and one
connection kept between reads that follows a replaced chat.db or WAL."""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import time
from pathlib import Path

import pytest
from edge_relay.body import BodyError, decode_attributed_body
from edge_relay.chatdb import ChatDB, ChatDBError, apple_date_to_iso, message_text, row_event
from relay_support import Messages
from watchdog.events import FileSystemEventHandler
from watchdog.observers import Observer


@pytest.mark.parametrize(
    "name, expected",
    [
        ("AttributedBodyTextOnly", "Noter test"),
        ("AttributedBodyTextOnly2", "Test 3"),
        ("URL", "https://github.com/ReagentX/Logria"),
        ("Blank", ""),
        ("MultiPart", "\ufffctest 1\ufffctest 2 \ufffctest 3"),
    ],
)
def test_real_attributed_bodies_decode_to_their_text(corpus, name, expected):
    blob = (corpus / "attributed_body" / name).read_bytes()
    assert decode_attributed_body(blob) == expected


def test_multipart_keeps_three_attachment_slots(corpus):
    text = decode_attributed_body((corpus / "attributed_body" / "MultiPart").read_bytes())
    assert text.count("\ufffc") == 3


def test_a_damaged_body_raises_a_clear_error():
    with pytest.raises(BodyError, match="not a typedstream archive"):
        decode_attributed_body(b"\x04\x0bstreamtyped garbage")


def test_a_damaged_body_never_crashes_and_logs_only_the_guid(caplog):
    blob = b"\x04\x0bstreamtyped\x81\xe8\x03\x84\x01@\x84\x84\x84\x08NSString\x01+\x06secret"
    with caplog.at_level(logging.WARNING):
        text = message_text("GUID-1", None, blob)
    assert text == "secret"  # recovered by the fallback scan
    assert "GUID-1" in caplog.text
    assert "secret" not in caplog.text
    assert message_text("GUID-2", None, b"\x00\x01") is None  # the contract's "no body"
    assert message_text("GUID-3", None, None) is None


def test_text_column_wins_over_the_body(corpus):
    blob = (corpus / "attributed_body" / "AttributedBodyTextOnly").read_bytes()
    assert message_text("G", "plain", blob) == "plain"
    assert message_text("G", None, blob) == "Noter test"


def test_apple_dates_in_seconds_and_nanoseconds():
    assert apple_date_to_iso(0) is None
    assert apple_date_to_iso(None) is None
    assert apple_date_to_iso(1) == "2001-01-01T00:00:01.000Z"
    # 2017-07-17 08:00:00 UTC, before macOS 10.13 (seconds) and after (nanoseconds).
    assert apple_date_to_iso(522000000) == "2017-07-17T16:00:00.000Z"
    assert apple_date_to_iso(522000000 * 10**9) == "2017-07-17T16:00:00.000Z"


def read_events(db: ChatDB, above: int) -> list:
    marks = db.scan(above)
    return [row_event(row) for row in db.read_rows([m.rowid for m in marks])]


def test_reads_see_new_rows_and_never_write(messages: Messages):
    db = ChatDB(str(messages.path))
    first = messages.incoming("+15550001111", text="one")
    marks = db.scan(0)
    assert [m.guid for m in marks] == [first]
    # A later write through the WAL is visible to the next read: no old snapshot is kept.
    second = messages.incoming("+15550001111", text="two")
    [event] = read_events(db, marks[-1].rowid)
    assert event["guid"] == second
    assert event["chat_guid"] == "any;-;+15550001111"
    assert event["handle"] == "+15550001111"
    assert event["service"] == "iMessage"
    assert event["is_from_me"] is False
    assert event["date"].endswith("Z")
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        db._connect().execute("DELETE FROM message")


def test_a_reaction_is_its_own_event_not_a_message(messages: Messages):
    db = ChatDB(str(messages.path))
    messages.incoming("+15550001111", text="Loved \u201chi\u201d", associated_type=2000)
    [event] = read_events(db, 0)
    assert event["type"] == "reaction" and "text" not in event


def test_an_older_schema_without_newer_columns_is_read(tmp_path):
    path = tmp_path / "chat.db"
    conn = sqlite3.connect(str(path))
    conn.executescript(
        """
        CREATE TABLE message (ROWID INTEGER PRIMARY KEY AUTOINCREMENT, guid TEXT UNIQUE NOT NULL,
            text TEXT, handle_id INTEGER DEFAULT 0, service TEXT, date INTEGER,
            is_from_me INTEGER DEFAULT 0);
        CREATE TABLE handle (ROWID INTEGER PRIMARY KEY AUTOINCREMENT UNIQUE, id TEXT NOT NULL);
        CREATE TABLE chat (ROWID INTEGER PRIMARY KEY AUTOINCREMENT, guid TEXT UNIQUE NOT NULL,
            chat_identifier TEXT);
        CREATE TABLE chat_message_join (chat_id INTEGER, message_id INTEGER);
        INSERT INTO handle (id) VALUES ('+15550002222');
        INSERT INTO message (guid, text, handle_id, service, date) VALUES
            ('OLD-1', 'hi', 1, 'iMessage', 522000000);
        """
    )
    conn.commit()
    conn.close()
    [event] = read_events(ChatDB(str(path)), 0)
    assert event["text"] == "hi"
    assert event["date"] == "2017-07-17T16:00:00.000Z"
    assert event["chat_guid"] is None


def test_an_unreadable_chat_db_says_what_to_check(tmp_path):
    db = ChatDB(str(tmp_path / "absent" / "chat.db"))
    with pytest.raises(ChatDBError, match="Full Disk Access"):
        db.max_rowid()
    ok, detail = db.check()
    assert not ok and "Full Disk Access" in detail


def wal_mode(path: Path) -> None:
    conn = sqlite3.connect(str(path))
    conn.execute("PRAGMA journal_mode = WAL")
    conn.close()


class FolderEvents(FileSystemEventHandler):
    """Every event the folder watch reports about chat.db and the files beside it."""

    def __init__(self, folder: Path):
        self.seen: list = []
        self.observer = Observer()
        self.observer.schedule(self, str(folder), recursive=False)

    def on_any_event(self, event) -> None:
        name = os.path.basename(os.fsdecode(event.src_path))
        if not event.is_directory and name.startswith("chat.db"):
            self.seen.append((event.event_type, name))

    def __enter__(self):
        self.observer.start()
        time.sleep(0.2)
        return self

    def __exit__(self, *exc_info) -> None:
        time.sleep(0.3)  # events of the last read are delivered
        self.observer.stop()
        self.observer.join(timeout=5)


def test_reads_after_the_first_leave_the_messages_folder_untouched(messages: Messages):
    # Messages has quit: no connection but the relay's is open on chat.db.
    wal_mode(messages.path)
    messages.incoming("+15550001111", text="one")
    db = ChatDB(str(messages.path))
    assert len(db.scan(0)) == 1
    with FolderEvents(messages.path.parent) as events:
        for _ in range(10):
            db.scan(0)
            db.max_rowid()
    assert events.seen == []
    assert db.reads == 21


def test_the_wal_stays_while_the_relay_reads_and_goes_once_it_closes(messages: Messages):
    wal_mode(messages.path)
    wal = Path(str(messages.path) + "-wal")
    db = ChatDB(str(messages.path))
    db.scan(0)
    # Messages writes and closes its connection: the relay's keeps the WAL from going, so no
    # read has to make it again.
    guid = messages.incoming("+15550001111", text="one")
    assert wal.exists()
    assert [m.guid for m in db.scan(0)] == [guid]
    db.close()
    messages.incoming("+15550001111", text="two")
    assert not wal.exists()  # the last connection to close took it


def test_a_replaced_chat_db_is_read_from_the_new_file(messages: Messages, tmp_path: Path):
    db = ChatDB(str(messages.path))
    first = messages.incoming("+15550001111", text="one")
    assert [m.guid for m in db.scan(0)] == [first]
    # chat.db replaced by another file (a restore, a rebuild): another inode at the same path.
    copy = tmp_path / "chat.db.new"
    shutil.copyfile(messages.path, copy)
    conn = sqlite3.connect(str(copy))
    with conn:
        conn.execute(
            "INSERT INTO message (guid, text, handle_id) SELECT 'RESTORED-1', 'back', handle_id "
            "FROM message WHERE guid = ?",
            (first,),
        )
    conn.close()
    os.replace(copy, messages.path)
    assert [m.guid for m in db.scan(0)] == [first, "RESTORED-1"]


def test_a_replaced_wal_is_read_at_once(messages: Messages):
    wal_mode(messages.path)
    wal = Path(str(messages.path) + "-wal")
    db = ChatDB(str(messages.path))
    first = messages.incoming("+15550001111", text="one")
    assert [m.guid for m in db.scan(0)] == [first]
    conn = sqlite3.connect(str(messages.path))
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    fresh = wal.with_name("chat.db-wal.new")
    fresh.write_bytes(b"")
    os.replace(fresh, wal)
    second = messages.incoming("+15550001111", text="two")
    # The next read opens the new WAL, rather than failing on (or reading) the one it held.
    assert [m.guid for m in db.scan(0)] == [first, second]


def test_reads_recover_once_chat_db_is_readable_again(messages: Messages, tmp_path: Path):
    wal_mode(messages.path)
    db = ChatDB(str(messages.path))
    first = messages.incoming("+15550001111", text="one")
    assert [m.guid for m in db.scan(0)] == [first]
    hidden = tmp_path / "Messages-hidden"
    messages.path.parent.rename(hidden)
    try:
        with pytest.raises(ChatDBError, match="Full Disk Access"):
            db.scan(0)
        ok, detail = db.check()
        assert not ok and "Full Disk Access" in detail
    finally:
        hidden.rename(messages.path.parent)
    second = messages.incoming("+15550001111", text="two")
    assert [m.guid for m in db.scan(0)] == [first, second]
    assert db.check() == (True, "readable, newest message row 2")
