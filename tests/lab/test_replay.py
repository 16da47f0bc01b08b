"""edge-lab phone replay: the message rows of another chat.db land in a lab account's chat.db as
Messages would have written them on arrival. A lab folder of files is enough here: no host runs
(the end-to-end run through a relay is in test_lab_replay.py)."""

import os
import sqlite3
import subprocess
import sys

import pytest
from edge_lab import hoststate, messages, replay
from edge_lab.layout import BadInput, LabError
from replay_support import (
    ALICE,
    BOB,
    BODY,
    CAROL,
    CORPUS,
    DIRECT_GUID,
    FRIEND,
    GROUP_GUID,
    MISSING_PATH,
    OLD_DATE,
    PHOTO,
    PHOTO_PATH,
    build_source,
    dump,
    lab_rows,
    older_schema,
)

OWNER = (60123, 20) if os.geteuid() == 0 else (os.getuid(), os.getgid())
PHONE = "+15557770021"
USER = "edge_replay_01"
NAMES = ["text", "body", "group", "reaction", "photo", "heic", "mine"]
SECOND = 10**9
TIMEOUT_S = 60


@pytest.fixture
def body():
    if not BODY.is_file():
        pytest.skip(f"real Messages data not present at {CORPUS}")
    return BODY.read_bytes()


@pytest.fixture
def lab_db(tmp_path):
    """A lab account's chat.db that already holds a message from FRIEND."""
    chat_db = messages.create_chat_db(tmp_path / "lab/Messages/chat.db", *OWNER)
    messages.add_incoming(chat_db, sender=FRIEND, text="before the replay", account_phone=PHONE)
    return chat_db


@pytest.fixture
def source(tmp_path, body):
    return build_source(tmp_path / "source", body)


def query(chat_db, sql, args=()):
    conn = sqlite3.connect(str(chat_db))
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def members(chat_db, chat_guid):
    return [
        r[0]
        for r in query(
            chat_db,
            "SELECT h.id FROM chat c JOIN chat_handle_join j ON j.chat_id = c.ROWID "
            "JOIN handle h ON h.ROWID = j.handle_id WHERE c.guid = ? ORDER BY h.id",
            (chat_guid,),
        )
    ]


def test_rows_land_as_new_arrivals_in_their_chats(lab_db, source, body):
    before = messages.max_rowid(lab_db)

    done = replay.replay(lab_db, source.path)

    # The direct chat and FRIEND's handle were in the lab already: reused, not added.
    assert (done.rows, done.chats, done.handles, done.attachments) == (7, 1, 3, 2)
    assert done.skipped == [] and done.last_rowid == 5019
    rows = lab_rows(lab_db)[1:]
    assert [r["guid"] for r in rows] == [source.guids[name] for name in NAMES]
    assert [r["ROWID"] for r in rows] == list(range(before + 1, before + 8))
    assert [r["date"] for r in rows] == [OLD_DATE + i * SECOND for i in range(7)]
    row = dict(zip(NAMES, rows))
    assert (row["text"]["text"], row["text"]["sender"]) == ("hello from a real Mac", FRIEND)
    assert row["body"]["text"] is None and row["body"]["attributedBody"] == body
    assert [row[n]["chat_guid"] for n in NAMES] == [DIRECT_GUID] * 2 + [GROUP_GUID] * 2 + [
        DIRECT_GUID
    ] * 3
    assert row["group"]["sender"] == ALICE and row["reaction"]["sender"] == BOB
    assert row["reaction"]["associated_message_type"] == 2000
    assert row["reaction"]["associated_message_guid"] == f"p:0/{row['group']['guid']}"
    mine = row["mine"]
    assert (mine["is_from_me"], mine["is_sent"], mine["sender"]) == (1, 1, FRIEND)
    assert mine["date_delivered"] == mine["date"] + SECOND

    chats = query(lab_db, "SELECT guid, style, chat_identifier, service_name FROM chat")
    assert chats == [
        (DIRECT_GUID, 45, FRIEND, "iMessage"),
        (GROUP_GUID, 43, "chat123456789", "iMessage"),
    ]
    assert members(lab_db, GROUP_GUID) == sorted([ALICE, BOB, CAROL])
    assert members(lab_db, DIRECT_GUID) == [FRIEND]
    assert query(lab_db, "SELECT COUNT(*) FROM handle") == [(4,)]
    joins = query(lab_db, "SELECT message_id, message_date FROM chat_message_join")
    assert sorted(joins)[1:] == [(r["ROWID"], r["date"]) for r in rows]


def test_attachment_files_come_along_or_are_recorded_as_not_downloaded(lab_db, source):
    done = replay.replay(lab_db, source.path)

    assert (done.attachments, done.files) == (2, 1)
    found = query(
        lab_db,
        "SELECT m.guid, a.guid, a.original_guid, a.filename, a.mime_type, a.uti, "
        "a.transfer_name, a.total_bytes, a.transfer_state FROM message m "
        "JOIN message_attachment_join j ON j.message_id = m.ROWID "
        "JOIN attachment a ON a.ROWID = j.attachment_id ORDER BY m.ROWID",
    )
    photo, heic = source.guids[PHOTO_PATH], source.guids[MISSING_PATH]
    photo_path = PHOTO_PATH.format(guid=photo)
    assert found == [
        (
            source.guids["photo"],
            photo,
            photo,
            f"~/Library/Messages/{photo_path}",
            "image/jpeg",
            "public.jpeg",
            "photo.jpeg",
            len(PHOTO),
            replay.TRANSFER_FINISHED,
        ),
        (
            source.guids["heic"],
            heic,
            heic,
            f"~/Library/Messages/{MISSING_PATH.format(guid=heic)}",
            "image/heic",
            "public.heic",
            "IMG_0001.HEIC",
            2_345_678,
            replay.TRANSFER_WAITING_FOR_ACCEPT,
        ),
    ]
    copied = lab_db.parent / photo_path
    assert copied.read_bytes() == PHOTO
    for path in [copied, *copied.relative_to(lab_db.parent).parents][:-1]:
        st = (lab_db.parent / path).stat()
        assert (st.st_uid, st.st_gid) == OWNER, path
    assert not (lab_db.parent / MISSING_PATH.format(guid=heic)).exists()


def test_a_guid_already_in_the_lab_is_skipped_and_reported(lab_db, source):
    first = replay.replay(lab_db, source.path, limit=2)
    assert (first.rows, first.last_rowid) == (2, 5004)
    unchanged = dump(lab_db)

    again = replay.replay(lab_db, source.path, limit=2)

    assert again.skipped == [source.guids["text"], source.guids["body"]]
    assert (again.rows, again.chats, again.handles, again.attachments) == (0, 0, 0, 0)
    assert dump(lab_db) == unchanged

    rest = replay.replay(lab_db, source.path)
    assert rest.skipped == [source.guids["text"], source.guids["body"]]
    assert rest.rows == 5
    guids = [r["guid"] for r in lab_rows(lab_db)[1:]]
    assert guids == [source.guids[name] for name in NAMES]


def test_since_rowid_and_limit_pick_the_rows(lab_db, source):
    done = replay.replay(lab_db, source.path, since_rowid=5004, limit=2)

    assert (done.rows, done.last_rowid) == (2, 5010)
    assert [r["guid"] for r in lab_rows(lab_db)[1:]] == [
        source.guids["group"],
        source.guids["reaction"],
    ]
    nothing = replay.replay(lab_db, source.path, since_rowid=5019)
    assert (nothing.rows, nothing.last_rowid, nothing.skipped) == (0, 0, [])


def test_now_dates_the_rows_at_the_replay_in_their_order(lab_db, source):
    start = messages.apple_now()

    replay.replay(lab_db, source.path, now=True)

    rows = lab_rows(lab_db)[1:]
    dates = [r["date"] for r in rows]
    assert start <= dates[0] <= messages.apple_now()
    assert dates == sorted(set(dates))
    mine = rows[-1]
    assert mine["date_delivered"] == mine["date"] + SECOND  # its other dates move with it
    joins = dict(query(lab_db, "SELECT message_id, message_date FROM chat_message_join"))
    assert [joins[r["ROWID"]] for r in rows] == dates


def test_an_older_schema_gives_the_columns_both_have(lab_db, tmp_path, body):
    # 2016-11-05, in seconds since 2001 as macOS wrote dates before 10.13.
    old_seconds = 500_000_000
    source = build_source(tmp_path / "old", body, schema=older_schema(), date=old_seconds)
    assert "date_edited" not in source.columns["message"]
    assert "original_guid" not in source.columns["attachment"]

    done = replay.replay(lab_db, source.path)

    assert (done.rows, done.chats, done.handles, done.attachments) == (7, 1, 3, 2)
    rows = lab_rows(lab_db)[1:]
    assert [r["guid"] for r in rows] == [source.guids[name] for name in NAMES]
    assert [r["date"] for r in rows] == [old_seconds + i for i in range(7)]
    row = dict(zip(NAMES, rows))
    assert row["body"]["attributedBody"] == body
    assert row["reaction"]["associated_message_guid"] == f"p:0/{row['group']['guid']}"
    # Columns the old release did not have take the lab's defaults.
    for r in rows:
        assert (r["date_edited"], r["message_summary_info"], r["is_stewie"]) == (None, None, 0)
    assert query(lab_db, "SELECT COUNT(*) FROM attachment WHERE original_guid = guid") == [(2,)]


def test_a_failing_replay_leaves_the_lab_unchanged(lab_db, source):
    # An attachment of the lab's own already claims the photo's original guid (UNIQUE): the
    # fifth row fails after four went in and the photo's file was copied.
    conn = sqlite3.connect(str(lab_db))
    with conn:
        conn.execute(
            "INSERT INTO attachment (guid, original_guid) VALUES ('LAB-OWN', ?)",
            (source.guids[PHOTO_PATH],),
        )
    conn.close()
    unchanged = dump(lab_db)

    with pytest.raises(LabError, match="the account's chat.db is unchanged"):
        replay.replay(lab_db, source.path)

    assert dump(lab_db) == unchanged
    assert not (lab_db.parent / "Attachments").exists()


def _not_sqlite(path):
    path.write_text("hello, this is not a database\n")


def _no_message_table(path):
    with sqlite3.connect(str(path)) as conn:
        conn.execute("CREATE TABLE notes (body TEXT)")


def _no_guids(path):
    with sqlite3.connect(str(path)) as conn:
        conn.execute("CREATE TABLE message (text TEXT)")


@pytest.mark.parametrize(
    "make, says",
    [
        (None, "does not exist"),
        (lambda path: path.mkdir(), "is not a file"),
        (_not_sqlite, "is not an SQLite database"),
        (_no_message_table, "has no message table: it is not a Messages chat.db"),
        (_no_guids, "message table without guids"),
    ],
    ids=["missing", "folder", "not-sqlite", "no-message-table", "no-guid"],
)
def test_a_source_that_is_not_a_messages_database_is_refused(lab_db, tmp_path, make, says):
    path = tmp_path / "given/chat.db"
    path.parent.mkdir()
    if make:
        make(path)
    unchanged = dump(lab_db)

    with pytest.raises(BadInput, match=says):
        replay.replay(lab_db, path)

    assert dump(lab_db) == unchanged


@pytest.mark.parametrize(
    "bounds, says",
    [({"limit": 0}, "--limit 0 is not a number of rows"), ({"since_rowid": -1}, "negative")],
)
def test_bounds_out_of_range_are_refused(lab_db, source, bounds, says):
    with pytest.raises(BadInput, match=says):
        replay.replay(lab_db, source.path, **bounds)
    assert len(lab_rows(lab_db)) == 1


# ---------------------------------------------------------------- the command


@pytest.fixture
def lab_folder(tmp_path):
    """A lab's files with one host whose USER is signed in to iMessage as PHONE."""
    lab = tmp_path / "lab-dir"
    host = lab / "hosts/mini-01"
    (host / "etc").mkdir(parents=True)
    (host / "etc/passwd").write_text(
        "root:x:0:0:System Administrator:/var/root:/bin/sh\n"
        f"{USER}:x:{OWNER[0]}:{OWNER[1]}:Replay shard:/Users/{USER}:/bin/zsh\n"
    )
    hoststate.update(host, lambda state: state["imessage"].update({USER: PHONE}))
    chat_db = host / f"Users/{USER}/Library/Messages/chat.db"
    messages.create_chat_db(chat_db, *OWNER)
    return lab, chat_db


def edge_lab(lab, *args):
    return subprocess.run(
        [sys.executable, "-m", "edge_lab.cli", *args],
        env=dict(os.environ, EDGE_LAB_DIR=str(lab)),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


def test_the_command_reports_what_it_added_and_skipped(lab_folder, source):
    lab, chat_db = lab_folder

    first = edge_lab(lab, "phone", "replay", "--to", PHONE, str(source.path))

    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [
        f"replayed into {USER} on mini-01: 7 rows, 2 chats, 4 handles, 2 attachments added "
        "(1 attachment file copied)",
        "read source rows up to ROWID 5019 (to go on: --since-rowid 5019)",
    ]
    assert len(lab_rows(chat_db)) == 7

    again = edge_lab(lab, "phone", "replay", "--to", PHONE, "--limit", "2", str(source.path))

    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == [
        f"replayed into {USER} on mini-01: 0 rows, 0 chats, 0 handles, 0 attachments added "
        "(0 attachment files copied)",
        f"skipped, guid already in chat.db: {source.guids['text']}, {source.guids['body']}",
        "read source rows up to ROWID 5004 (to go on: --since-rowid 5004)",
    ]
    # Message text is personal data: the command names rows by guid only.
    assert "hello" not in first.stdout + again.stdout


@pytest.mark.parametrize(
    "args, says",
    [
        (("--to", "+15557770999"), "no lab account is signed in to iMessage as +15557770999"),
        (("--to", "5550100"), "phone number '5550100' is not E.164"),
        (("--to", PHONE, "--limit", "0"), "--limit 0 is not a number of rows"),
        (("--to", PHONE, "--since-rowid", "-1"), "--since-rowid -1 is negative"),
    ],
    ids=["unknown-phone", "not-e164", "limit", "since-rowid"],
)
def test_the_command_refuses_bad_input_with_status_2(lab_folder, source, args, says):
    lab, chat_db = lab_folder
    unchanged = dump(chat_db)

    result = edge_lab(lab, "phone", "replay", *args, str(source.path))

    assert result.returncode == 2, result.stdout + result.stderr
    assert says in result.stderr
    assert result.stdout == ""
    assert dump(chat_db) == unchanged


@pytest.mark.parametrize(
    "make, says",
    [
        (None, "does not exist"),
        (_not_sqlite, "is not an SQLite database"),
        (_no_message_table, "has no message table"),
    ],
    ids=["missing", "not-sqlite", "no-message-table"],
)
def test_the_command_refuses_a_bad_source_with_status_2(lab_folder, tmp_path, make, says):
    lab, chat_db = lab_folder
    path = tmp_path / "chat.db"
    if make:
        make(path)
    unchanged = dump(chat_db)

    result = edge_lab(lab, "phone", "replay", "--to", PHONE, str(path))

    assert result.returncode == 2, result.stdout + result.stderr
    assert says in result.stderr and str(path) in result.stderr
    assert dump(chat_db) == unchanged
