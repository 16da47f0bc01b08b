"""Reading what Messages really writes: bodies, edits, unsends, reactions, groups, schemas."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest
import yaml
from edge_relay.body import BodyError, decode_summary_info
from edge_relay.chatdb import ChatDB, parse_target, revision_events, revision_of, row_event
from relay_support import CORPUS, ROOT, Messages

HANDLE = "+15550001111"


@pytest.fixture(scope="module")
def edit_history() -> Path:
    folder = CORPUS / "edit_history"
    if not folder.is_dir():
        pytest.skip(f"real Messages edit histories not available: {folder} is absent")
    return folder


def write(path: Path, sql: str, params: tuple = ()) -> int:
    conn = sqlite3.connect(str(path))
    try:
        with conn:
            return conn.execute(sql, params).lastrowid
    finally:
        conn.close()


def read_all(path: Path) -> list:
    db = ChatDB(str(path))
    return db.read_rows([mark.rowid for mark in db.scan(0)])


def chat(path: Path, guid: str, style: int, identifier: str) -> int:
    return write(
        path,
        "INSERT INTO chat (guid, style, chat_identifier, service_name) VALUES (?, ?, ?, ?)",
        (guid, style, identifier, guid.split(";")[0]),
    )


def message(path: Path, chat_rowid: int, handle_rowid: int, **columns) -> str:
    columns.setdefault("guid", f"G-{len(read_all(path)) + 1}")
    columns.setdefault("date", 700000000 * 10**9)
    columns["handle_id"] = handle_rowid
    names = ", ".join(columns)
    marks = ", ".join("?" * len(columns))
    rowid = write(path, f"INSERT INTO message ({names}) VALUES ({marks})", tuple(columns.values()))
    write(
        path,
        "INSERT INTO chat_message_join (chat_id, message_id) VALUES (?, ?)",
        (chat_rowid, rowid),
    )
    return columns["guid"]


# Edit history and unsends (message_summary_info)


def test_the_edit_history_reads_oldest_first(edit_history):
    info = decode_summary_info((edit_history / "Edited.plist").read_bytes())
    assert [text for text, _ in info.edits[0]] == [
        "First message  ",
        "Edit 1",
        "Edit 2",
        "Edited message",
    ]
    dates = [moment for _, moment in info.edits[0]]
    assert dates == sorted(dates) and all(dates)
    assert info.retracted == []


def test_an_unsent_part_is_reported(edit_history):
    info = decode_summary_info((edit_history / "Deleted.plist").read_bytes())
    assert info.retracted == [0]
    assert info.edits == {}


def test_a_summary_that_is_not_a_property_list_is_refused_clearly():
    with pytest.raises(BodyError, match="not a property list"):
        decode_summary_info(b"\x00garbage")


def test_an_edit_then_an_unsend_become_their_own_events(messages: Messages, edit_history):
    guid = messages.incoming(HANDLE, text="First message  ")
    db = ChatDB(str(messages.path))
    [row] = db.read_rows([m.rowid for m in db.scan(0)])
    before = revision_of(row)
    assert revision_events(row, before) == ([], before)  # nothing changed yet

    edited_at = 690513494 * 10**9
    write(
        messages.path,
        "UPDATE message SET text = 'Edited message', date_edited = ?, message_summary_info = ? "
        "WHERE guid = ?",
        (edited_at, (edit_history / "Edited.plist").read_bytes(), guid),
    )
    [mark] = db.scan(0)
    assert mark.revision == (edited_at, 0)
    [row] = db.read_rows([mark.rowid])
    events, after = revision_events(row, before)
    [edit] = events
    assert edit["type"] == "edit" and edit["message_guid"] == guid
    assert edit["guid"] == f"{guid}:edit:{edited_at}"
    assert edit["text"] == "Edited message"
    [part] = edit["parts"]
    assert [entry["text"] for entry in part["history"]] == [
        "First message  ",
        "Edit 1",
        "Edit 2",
        "Edited message",
    ]
    assert part["history"][0]["date"] == "2022-11-19T01:17:54.272Z"
    assert revision_events(row, after)[0] == []  # the same state read again says nothing

    retracted_at = edited_at + 10**9
    write(
        messages.path,
        "UPDATE message SET text = NULL, attributedBody = NULL, date_retracted = ?, "
        "message_summary_info = ? WHERE guid = ?",
        (retracted_at, (edit_history / "Deleted.plist").read_bytes(), guid),
    )
    [row] = db.read_rows([mark.rowid])
    [unsend], _ = revision_events(row, after)
    assert unsend["type"] == "unsend" and unsend["parts"] == [0]
    assert unsend["guid"] == f"{guid}:unsend:{retracted_at}"
    assert unsend["message_guid"] == guid


# Reactions, groups, chat guids, attachments


@pytest.mark.parametrize(
    "pointer, expected",
    [
        ("p:0/AAAA-1111", ("AAAA-1111", 0)),
        ("p:2/AAAA-1111", ("AAAA-1111", 2)),
        ("bp:AAAA-1111", ("AAAA-1111", 0)),
        ("AAAA-1111", ("AAAA-1111", 0)),
        (None, (None, 0)),
    ],
)
def test_reaction_targets_of_every_shape(pointer, expected):
    assert parse_target(pointer) == expected


@pytest.mark.parametrize(
    "kind, action, name",
    [
        (2000, "add", "love"),
        (2001, "add", "like"),
        (2003, "add", "laugh"),
        (2005, "add", "question"),
        (2006, "add", "emoji"),
        (3000, "remove", "love"),
        (3004, "remove", "emphasize"),
        (3007, "remove", "sticker"),
    ],
)
def test_reactions_add_and_remove(messages: Messages, kind, action, name):
    target = messages.incoming(HANDLE, text="hi")
    guid = messages.incoming(HANDLE, text="Loved", associated_type=kind)
    write(
        messages.path,
        "UPDATE message SET associated_message_guid = ?, associated_message_emoji = ? "
        "WHERE guid = ?",
        (f"p:0/{target}", "\U0001f389" if kind == 2006 else None, guid),
    )
    event = row_event(read_all(messages.path)[-1])
    assert event["type"] == "reaction" and event["guid"] == guid
    assert (event["action"], event["reaction"]) == (action, name)
    assert (event["target_guid"], event["target_part"]) == (target, 0)
    assert event["chat_guid"] == f"any;-;{HANDLE}"
    assert event["emoji"] == ("\U0001f389" if kind == 2006 else None)


def test_group_chats_membership_and_renames(messages: Messages):
    path = messages.path
    alice = messages.handle("+15550002222")
    bob = messages.handle("+15550003333")
    carol = messages.handle("carol@example.com")
    group = chat(path, "iMessage;+;chat123456789", 43, "chat123456789")
    for member in (bob, carol, alice):
        write(
            path, "INSERT INTO chat_handle_join (chat_id, handle_id) VALUES (?, ?)", (group, member)
        )
    said = message(path, group, alice, text="hello all", service="iMessage")
    added = message(path, group, alice, item_type=1, group_action_type=0, other_handle=bob)
    removed = message(path, group, alice, item_type=1, group_action_type=1, other_handle=bob)
    left = message(path, group, bob, item_type=3, group_action_type=0)
    renamed = message(path, group, alice, item_type=2, group_title="Book club")
    photo = message(path, group, alice, item_type=3, group_action_type=1)
    events = {row.guid: row_event(row) for row in read_all(path)}

    assert events[said]["type"] == "message" and events[said]["is_group"] is True
    assert events[said]["handle"] == "+15550002222"
    # Everyone in the group but this account, so the backend knows who reads its answer.
    members = ["+15550002222", "+15550003333", "carol@example.com"]
    assert events[said]["participants"] == members
    assert events[added]["change"] == "member_added"
    assert events[added]["member"] == "+15550003333"
    assert events[removed]["change"] == "member_removed"
    assert events[left]["change"] == "member_left"
    assert events[left]["member"] == "+15550003333"
    assert events[renamed]["change"] == "renamed"
    assert events[renamed]["title"] == "Book club"
    for guid in (added, removed, left, renamed):
        assert events[guid]["type"] == "group_change"
        assert events[guid]["participants"] == members
        assert events[guid]["chat_guid"] == "iMessage;+;chat123456789"
    assert events[photo] is None  # a new group photo is not part of the contract


def test_a_direct_chat_names_the_other_party_as_its_participant(messages: Messages):
    messages.incoming(HANDLE, text="just us")
    [event] = [row_event(row) for row in read_all(messages.path)]
    assert event["participants"] == [HANDLE] and event["is_group"] is False


@pytest.mark.parametrize(
    "guid, style, group",
    [
        ("iMessage;-;+15550004444", 45, False),
        ("SMS;-;+15550004444", 45, False),
        ("RCS;-;+15550004444", 45, False),
        ("any;-;+15550004444", 45, False),
        ("iMessage;+;chat987654321", 43, True),
        ("any;+;chat987654321", 43, True),
        ("any;-;someone@example.com", 45, False),
    ],
)
def test_chat_guids_of_every_shape_pass_unchanged(messages: Messages, guid, style, group):
    sender = messages.handle("+15550004444")
    room = chat(messages.path, guid, style, guid.split(";")[-1])
    message(messages.path, room, sender, text="hi")
    [event] = [row_event(row) for row in read_all(messages.path)]
    assert event["chat_guid"] == guid
    assert event["is_group"] is group


def test_attachments_come_with_path_type_name_and_size(messages: Messages, corpus):
    body = (corpus / "attributed_body" / "MultiPart").read_bytes()
    guid = messages.incoming(HANDLE, text=None, body=body)
    for number in range(3):
        attachment = write(
            messages.path,
            "INSERT INTO attachment (guid, original_guid, filename, mime_type, transfer_name, "
            "total_bytes, uti) VALUES (?, ?, ?, 'image/jpeg', ?, ?, 'public.jpeg')",
            (
                f"AT-{number}",
                f"AT-{number}",
                f"~/Library/Messages/Attachments/ab/{number}/IMG_{number}.jpeg",
                f"IMG_{number}.jpeg",
                1000 + number,
            ),
        )
        write(
            messages.path,
            "INSERT INTO message_attachment_join (message_id, attachment_id) "
            "SELECT ROWID, ? FROM message WHERE guid = ?",
            (attachment, guid),
        )
    [event] = [row_event(row) for row in read_all(messages.path)]
    assert event["text"] == "\ufffctest 1\ufffctest 2 \ufffctest 3"
    assert [a["transfer_name"] for a in event["attachments"]] == [
        "IMG_0.jpeg",
        "IMG_1.jpeg",
        "IMG_2.jpeg",
    ]
    first = event["attachments"][0]
    assert first["mime_type"] == "image/jpeg" and first["size"] == 1000
    assert first["path"].endswith("/Library/Messages/Attachments/ab/0/IMG_0.jpeg")
    assert not first["path"].startswith("~")


def test_a_body_the_decoder_rejects_is_forwarded_as_far_as_readable(messages: Messages, caplog):
    blob = b"\x04\x0bstreamtyped\x81\xe8\x03\x84\x01@\x84\x84\x84\x08NSString\x01+\x06secret"
    guid = messages.incoming(HANDLE, text=None, body=blob)
    broken = messages.incoming(HANDLE, text=None, body=b"\x00\x01not a body")
    with caplog.at_level(logging.WARNING):
        events = {row.guid: row_event(row) for row in read_all(messages.path)}
    assert events[guid]["text"] == "secret"
    assert events[broken]["text"] is None and events[broken]["type"] == "message"
    assert guid in caplog.text and broken in caplog.text
    assert "secret" not in caplog.text


def test_an_old_schema_without_edits_attachments_or_groups_is_read(tmp_path):
    path = tmp_path / "chat.db"
    conn = sqlite3.connect(str(path))
    conn.executescript(
        """
        CREATE TABLE message (ROWID INTEGER PRIMARY KEY AUTOINCREMENT, guid TEXT UNIQUE NOT NULL,
            text TEXT, handle_id INTEGER DEFAULT 0, service TEXT, date INTEGER,
            is_from_me INTEGER DEFAULT 0, associated_message_type INTEGER DEFAULT 0,
            associated_message_guid TEXT);
        CREATE TABLE handle (ROWID INTEGER PRIMARY KEY AUTOINCREMENT UNIQUE, id TEXT NOT NULL);
        CREATE TABLE chat (ROWID INTEGER PRIMARY KEY AUTOINCREMENT, guid TEXT UNIQUE NOT NULL,
            chat_identifier TEXT);
        CREATE TABLE chat_message_join (chat_id INTEGER, message_id INTEGER);
        INSERT INTO handle (id) VALUES ('+15550002222');
        INSERT INTO chat (guid, chat_identifier) VALUES ('iMessage;-;+15550002222', '+15550002222');
        INSERT INTO message (guid, text, handle_id, service, date) VALUES
            ('OLD-1', 'hi', 1, 'iMessage', 522000000);
        INSERT INTO message (guid, text, handle_id, service, date, associated_message_type,
            associated_message_guid) VALUES ('OLD-2', 'Liked', 1, 'iMessage', 522000001, 2001,
            'p:0/OLD-1');
        INSERT INTO chat_message_join VALUES (1, 1), (1, 2);
        """
    )
    conn.commit()
    conn.close()
    db = ChatDB(str(path))
    marks = db.scan(0)
    assert [m.revision for m in marks] == [(0, 0), (0, 0)]
    message_row, reaction_row = db.read_rows([m.rowid for m in marks])
    event = row_event(message_row)
    assert event["text"] == "hi" and event["attachments"] == []
    assert event["date"] == "2017-07-17T16:00:00.000Z"
    assert event["is_group"] is False
    assert revision_of(message_row)["edits"] == {}
    assert row_event(reaction_row)["target_guid"] == "OLD-1"


def test_every_event_type_meets_the_contract(messages: Messages, edit_history):
    """The relay's events validate against backend/openapi.yaml's Event schema."""
    jsonschema = pytest.importorskip("jsonschema")
    spec = yaml.safe_load((ROOT / "backend" / "openapi.yaml").read_text())
    schemas = spec["components"]["schemas"]
    resolver_schema = {"$defs": schemas, **schemas["Event"]}
    text = yaml.safe_dump(resolver_schema).replace("#/components/schemas/", "#/$defs/")
    validator = jsonschema.Draft202012Validator(yaml.safe_load(text))

    target = messages.incoming(HANDLE, text="hi")
    reaction = messages.incoming(HANDLE, text="Liked", associated_type=2001)
    write(
        messages.path,
        "UPDATE message SET associated_message_guid = ? WHERE guid = ?",
        (f"p:0/{target}", reaction),
    )
    rows = read_all(messages.path)
    events = [row_event(row) for row in rows]
    before = revision_of(rows[0])
    write(
        messages.path,
        "UPDATE message SET date_edited = 1, message_summary_info = ? WHERE guid = ?",
        ((edit_history / "Edited.plist").read_bytes(), target),
    )
    edited = read_all(messages.path)[0]
    events += revision_events(edited, before)[0]
    write(
        messages.path,
        "UPDATE message SET date_retracted = 2, message_summary_info = ? WHERE guid = ?",
        ((edit_history / "Deleted.plist").read_bytes(), target),
    )
    events += revision_events(read_all(messages.path)[0], revision_of(edited))[0]
    assert [e["type"] for e in events] == ["message", "reaction", "edit", "unsend"]
    for event in events:
        errors = sorted(validator.iter_errors(event), key=str)
        assert not errors, f"{event['type']}: {errors[0].message}"
