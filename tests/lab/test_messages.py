"""chat.db as the lab builds and writes it: Messages' tables, and rows as Messages writes them."""

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from edge_lab import messages

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO.parent / "shared/corpus/imessage"
needs_corpus = pytest.mark.skipif(
    not CORPUS.is_dir(), reason=f"real Messages data not present at {CORPUS}"
)
USER_UID = 60123
PHONE = "+15551230001"


def _columns(conn):
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    return {
        t: [(c[1], c[2], c[3], c[4], c[5]) for c in conn.execute(f"PRAGMA table_info({t})")]
        for t in tables
        if t != "sqlite_sequence"
    }


@pytest.fixture
def chat_db(tmp_path):
    return messages.create_chat_db(tmp_path / "Messages/chat.db", USER_UID, 20)


@needs_corpus
def test_create_chat_db_has_exactly_messages_tables_and_columns(chat_db):
    reference = sqlite3.connect(":memory:")
    reference.executescript((CORPUS / "chat_db_schema.sql").read_text())
    conn = sqlite3.connect(chat_db)

    assert _columns(conn) == _columns(reference)
    assert "attributedBody" in [c[0] for c in _columns(conn)["message"]]
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    st = chat_db.stat()
    assert (st.st_uid, st.st_gid) == (USER_UID, 20)


def test_create_chat_db_keeps_an_existing_database(chat_db):
    guid = messages.add_incoming(chat_db, sender="+15551230002", text="hi", account_phone=PHONE)

    messages.create_chat_db(chat_db, USER_UID, 20)

    assert messages.message(chat_db, guid)["text"] == "hi"


def test_a_missing_database_is_reported_not_created(tmp_path):
    missing = tmp_path / "nowhere/chat.db"
    with pytest.raises(FileNotFoundError, match="sign the user in to iMessage"):
        messages.outgoing_after(missing, 0)
    assert not missing.exists()


@needs_corpus
def test_incoming_with_an_attributed_body_has_null_text(chat_db):
    body = (CORPUS / "attributed_body/AttributedBodyTextOnly").read_bytes()

    guid = messages.add_incoming(
        chat_db, sender="+15551230002", text="ignored", account_phone=PHONE, attributed_body=body
    )

    row = messages.message(chat_db, guid)
    assert row["text"] is None and row["attributed_body"] == body
    assert row["is_from_me"] == 0 and row["handle"] == "+15551230002"
    assert row["chat_guid"] == "any;-;+15551230002" and row["account"] == f"p:{PHONE}"


def test_incoming_and_outgoing_share_the_direct_chat(chat_db):
    messages.add_incoming(chat_db, sender="+15551230002", text="hello", account_phone=PHONE)
    out = messages.add_outgoing(
        chat_db, target="any;-;+15551230002", mode="chat", text="hi back", account_phone=PHONE
    )

    conn = sqlite3.connect(chat_db)
    assert conn.execute("SELECT COUNT(*) FROM chat").fetchone()[0] == 1
    assert conn.execute("SELECT COUNT(*) FROM handle").fetchone()[0] == 1
    assert conn.execute("SELECT COUNT(*) FROM chat_message_join").fetchone()[0] == 2
    row = messages.message(chat_db, out)
    assert (row["is_from_me"], row["is_sent"], row["handle"]) == (1, 0, "+15551230002")
    assert [r["text"] for r in messages.incoming_after(chat_db, 0)] == ["hello"]


@pytest.mark.parametrize("shape", [None, "iMessage;+;chat123456789012345678"])
def test_a_group_chat_and_its_messages_as_messages_writes_them(chat_db, shape):
    members = ["+15551230003", "+15551230002"]
    group = messages.add_group_chat(chat_db, members=members, account_phone=PHONE, guid=shape)
    said = messages.add_incoming(
        chat_db, sender="+15551230003", text="hi all", account_phone=PHONE, chat_guid=group
    )
    reply = messages.add_outgoing(
        chat_db, target=group, mode="chat", text="hello both", account_phone=PHONE
    )

    assert group == shape or group.startswith("any;+;chat")
    conn = sqlite3.connect(chat_db)
    style, identifier, room = conn.execute(
        "SELECT style, chat_identifier, room_name FROM chat WHERE guid = ?", (group,)
    ).fetchone()
    assert style == 43 and identifier == room == group.split(";+;")[1]
    [(handle_id, joins)] = conn.execute(
        "SELECT m.handle_id, COUNT(j.chat_id) FROM message m "
        "JOIN chat_message_join j ON j.message_id = m.ROWID WHERE m.guid = ?",
        (reply,),
    ).fetchall()
    # One row in the group, addressed to nobody in particular.
    assert (handle_id, joins) == (0, 1)
    assert messages.message(chat_db, said)["handle"] == "+15551230003"
    assert messages.message(chat_db, said)["chat_guid"] == group
    assert messages.chat_handles(chat_db, group) == sorted(members)


def test_a_group_keeps_handle_0_for_its_sends_with_one_member_left(chat_db):
    group = messages.add_group_chat(
        chat_db, members=["+15551230002", "+15551230003"], account_phone=PHONE
    )
    conn = sqlite3.connect(chat_db)
    with conn:
        conn.execute(
            "DELETE FROM chat_handle_join WHERE handle_id = "
            "(SELECT ROWID FROM handle WHERE id = '+15551230003')"
        )
    sent = messages.add_outgoing(
        chat_db, target=group, mode="chat", text="still a group", account_phone=PHONE
    )
    assert messages.message(chat_db, sent)["handle"] is None


def test_group_chats_refuse_what_messages_would_not_write(chat_db):
    with pytest.raises(ValueError, match="at least two"):
        messages.add_group_chat(chat_db, members=["+15551230002"], account_phone=PHONE)
    with pytest.raises(ValueError, match="not of the form"):
        messages.add_group_chat(
            chat_db,
            members=["+15551230002", "+15551230003"],
            account_phone=PHONE,
            guid="any;-;+15551230002",
        )
    group = messages.add_group_chat(
        chat_db, members=["+15551230002", "+15551230003"], account_phone=PHONE
    )
    with pytest.raises(messages.ChatNotFound):
        messages.add_incoming(
            chat_db, sender="+15559999999", text="x", account_phone=PHONE, chat_guid=group
        )
    assert messages.max_rowid(chat_db) == 0


def test_unknown_chat_is_refused_and_writes_nothing(chat_db):
    with pytest.raises(messages.ChatNotFound):
        messages.add_outgoing(
            chat_db, target="any;-;+15550000000", mode="chat", text="x", account_phone=PHONE
        )
    with pytest.raises(ValueError, match="not 'chat' or 'handle'"):
        messages.add_outgoing(chat_db, target="x", mode="group", text="x", account_phone=PHONE)
    assert messages.max_rowid(chat_db) == 0


def test_mark_sent_records_delivery_or_failure(chat_db):
    sent = messages.add_outgoing(
        chat_db, target="+15551230002", mode="handle", text="a", account_phone=PHONE
    )
    failed = messages.add_outgoing(
        chat_db, target="+15551230002", mode="handle", text="b", account_phone=PHONE
    )

    messages.mark_sent(chat_db, sent)
    messages.mark_sent(chat_db, failed, error=messages.SEND_FAILED_ERROR)

    a, b = messages.outgoing_after(chat_db, 0)
    assert (a["is_sent"], a["is_delivered"], a["error"]) == (1, 1, 0)
    assert a["date_delivered"] >= a["date"] > 0
    assert (b["is_sent"], b["error"]) == (0, 22)
    with pytest.raises(LookupError, match="no outgoing message"):
        messages.mark_sent(chat_db, "NOT-A-GUID")


@pytest.mark.skipif(os.geteuid() != 0, reason="only root writes another user's database")
def test_root_writes_leave_the_wal_files_to_the_owner(chat_db):
    conn = messages.connect(chat_db)  # a reader holding the database open keeps the WAL
    conn.execute("SELECT 1 FROM message").fetchall()
    messages.add_incoming(chat_db, sender="+15551230002", text="x", account_phone=PHONE)

    for suffix in ("-wal", "-shm"):
        st = Path(str(chat_db) + suffix).stat()
        assert (st.st_uid, st.st_gid) == (USER_UID, 20)
    conn.close()


# Every open connection holds a read lock on this byte of chat.db-shm (SQLite's unix VFS:
# the "DMS" lock); a connection that finds it free resets the shared memory.
SHM_DMS_BYTE = 128
SHM_DMS_PROBE = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
try:
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, int(sys.argv[2]))
except OSError:
    print("held")
else:
    print("free")
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="only root writes another user's database")
def test_root_writes_keep_the_locks_of_a_reader_in_the_same_process(chat_db):
    shm = str(chat_db) + "-shm"
    reader = sqlite3.connect(f"file:{chat_db}?mode=ro", uri=True)  # a relay under test, say
    try:
        reader.execute("SELECT COUNT(*) FROM message").fetchone()
        messages.add_incoming(chat_db, sender="+15551230002", text="x", account_phone=PHONE)
        # Seen from another process (Messages, the osascript stand-in), the reader is still
        # there: had the lab dropped this process's locks, the next connection would reset
        # the shared memory under the reader's map.
        probe = subprocess.run(
            [sys.executable, "-c", SHM_DMS_PROBE, shm, str(SHM_DMS_BYTE)],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        assert probe.stdout.strip() == "held"
    finally:
        reader.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root writes another user's database")
def test_root_writes_never_chown_what_a_wal_link_points_at(chat_db, tmp_path):
    target = tmp_path / "not-theirs"
    target.write_text("root's file")
    wal = Path(str(chat_db) + "-wal")
    wal.symlink_to(target)
    with pytest.raises(sqlite3.Error):
        messages.add_incoming(chat_db, sender="+15551230002", text="x", account_phone=PHONE)
    assert (target.stat().st_uid, target.stat().st_gid) == (0, 0)
    assert os.lstat(wal).st_uid == USER_UID
