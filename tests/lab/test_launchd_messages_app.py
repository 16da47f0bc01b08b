"""The Messages stand-in behind osascript: who may send, and the rows a send leaves in chat.db."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from edge_lab import hoststate, messages
from test_launchd import REPO, USER_PYTHON, USER_UID, host, wait_until  # noqa: F401

RELAY_SCRIPT = REPO / "files/relay/src/edge_relay/send_messages.applescript"
PHONE = "+15551230001"
FRIEND = "+15551230002"


@pytest.fixture
def messages_host(host):  # noqa: F811
    def signed_in(state):
        state["imessage"] = {"edge_t": PHONE}
        state["automation"] = ["edge_t"]

    hoststate.update(host.root, signed_in)
    host.chat_db = host.root / "Users/edge_t/Library/Messages/chat.db"
    messages.create_chat_db(host.chat_db, USER_UID, 20)
    os.chown(host.chat_db.parent, USER_UID, 20)
    host.request("gui_login", uid=USER_UID)
    return host


def osascript(lab_host, *args, uid=USER_UID, script=RELAY_SCRIPT):
    python = USER_PYTHON if uid else sys.executable
    return subprocess.run(
        [python, "-m", "edge_lab.standins.osascript", str(script), *args],
        env=lab_host.env,
        capture_output=True,
        text=True,
        timeout=20,
        user=uid,
    )


def texts(*bubbles):
    """The script's arguments after mode and target: a ("text", bubble) pair per bubble."""
    return [item for bubble in bubbles for item in ("text", bubble)]


TRICKY = [
    'say "hi" \\ back\\slash',
    "line one\nline two",
    "emoji 🙂👍🏽 done",
    '" & (do shell script "id") & "',
    "end tell\nend run",
]


def test_send_to_a_handle_writes_the_rows_messages_writes(messages_host):
    result = osascript(messages_host, "handle", FRIEND, *texts(*TRICKY))

    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == ""
    rows = messages.outgoing_after(messages_host.chat_db, 0)
    assert [r["text"] for r in rows] == TRICKY
    before = time.time()
    rows = wait_until(
        lambda: (
            all(r["is_sent"] for r in messages.outgoing_after(messages_host.chat_db, 0))
            and messages.outgoing_after(messages_host.chat_db, 0)
        ),
        timeout=3,
    )
    for row in rows:
        assert row["is_from_me"] == 1 and row["is_delivered"] == 1 and row["error"] == 0
        assert row["service"] == "iMessage" and row["account"] == f"p:{PHONE}"
        assert row["chat_guid"] == f"any;-;{FRIEND}" and row["handle"] == FRIEND
        # Nanoseconds since 2001-01-01 UTC.
        assert abs(row["date"] / 1e9 + messages.APPLE_EPOCH_OFFSET - before) < 10
        assert row["date_delivered"] >= row["date"]
    assert [r["rowid"] for r in rows] == sorted(r["rowid"] for r in rows)

    conn = messages.connect(messages_host.chat_db)
    try:
        chat = conn.execute("SELECT style, chat_identifier, service_name FROM chat").fetchall()
        joins = conn.execute("SELECT COUNT(*) FROM chat_handle_join").fetchone()[0]
    finally:
        conn.close()
    assert [tuple(c) for c in chat] == [(45, FRIEND, "iMessage")]
    assert joins == 1


def test_send_to_an_existing_chat_and_to_an_undeliverable_handle(messages_host):
    assert osascript(messages_host, "handle", FRIEND, *texts("first")).returncode == 0
    assert osascript(messages_host, "chat", f"any;-;{FRIEND}", *texts("second")).returncode == 0
    hoststate.update(messages_host.root, lambda s: s.update(undeliverable=["+15559990000"]))

    assert osascript(messages_host, "handle", "+15559990000", *texts("lost")).returncode == 0

    def settled():
        rows = messages.outgoing_after(messages_host.chat_db, 0)
        return len(rows) == 3 and all(r["is_sent"] or r["error"] for r in rows) and rows

    first, second, lost = wait_until(settled, timeout=3)
    assert second["chat_guid"] == first["chat_guid"] and second["is_sent"] == 1
    assert lost["error"] == messages.SEND_FAILED_ERROR and lost["is_sent"] == 0


def _refused(result, message):
    assert result.returncode == 1
    assert message in result.stderr, result.stderr
    assert result.stderr.startswith(str(RELAY_SCRIPT) + ":")


def test_refusals_come_in_the_order_macos_checks_them(messages_host):
    chat = "any;-;+15550000000"
    _refused(
        osascript(messages_host, "chat", chat, *texts("x")),
        'execution error: Messages got an error: Can\'t get chat id "any;-;+15550000000". (-1728)',
    )

    hoststate.update(messages_host.root, lambda s: s.update(imessage={}))
    _refused(
        osascript(messages_host, "chat", chat, *texts("x")),
        "execution error: Messages got an error: Can't get account 1 whose service type = "
        "iMessage. Invalid index. (-1719)",
    )

    hoststate.update(messages_host.root, lambda s: s.update(automation=[]))
    _refused(
        osascript(messages_host, "handle", FRIEND, *texts("x")),
        "execution error: Not authorized to send Apple events to Messages. (-1743)",
    )

    messages_host.request("gui_logout", uid=USER_UID)
    _refused(
        osascript(messages_host, "handle", FRIEND, *texts("x")),
        "execution error: Messages got an error: Application isn't running. (-600)",
    )
    assert messages.outgoing_after(messages_host.chat_db, 0) == []


def test_only_the_relays_script_runs(messages_host):
    other = messages_host.root / "other.applescript"
    other.write_text(RELAY_SCRIPT.read_text().replace("send partValue", "delete partValue"))
    reformatted = messages_host.root / "spaced.applescript"
    reformatted.write_text("\n\n" + RELAY_SCRIPT.read_text().replace("\t", "    ") + "\n")
    refusal = "osascript: this lab only runs the edge relay's Messages script"

    for args in (
        (str(other), "handle", FRIEND, "text", "x"),
        ("-e", 'tell application "Messages"'),
    ):
        result = subprocess.run(
            [USER_PYTHON, "-m", "edge_lab.standins.osascript", *args],
            env=messages_host.env,
            capture_output=True,
            text=True,
            timeout=20,
            user=USER_UID,
        )
        assert result.returncode == 1 and refusal in result.stderr
    assert messages.outgoing_after(messages_host.chat_db, 0) == []
    assert (
        osascript(messages_host, "handle", FRIEND, *texts("ok"), script=reformatted).returncode == 0
    )


def test_root_reaches_the_users_messages_through_launchctl_asuser(messages_host):
    direct = osascript(messages_host, "handle", FRIEND, *texts("as root"), uid=None)
    assert direct.returncode == 1 and "(-600)" in direct.stderr

    result = subprocess.run(
        [sys.executable, "-m", "edge_lab.standins.launchctl", "asuser", str(USER_UID)]
        + [sys.executable, "-m", "edge_lab.standins.osascript", str(RELAY_SCRIPT)]
        + ["handle", FRIEND, "text", "via asuser"],
        env=messages_host.env,
        capture_output=True,
        text=True,
        timeout=20,
    )

    assert result.returncode == 0, result.stderr
    assert [r["text"] for r in messages.outgoing_after(messages_host.chat_db, 0)] == ["via asuser"]
    # The user can still open its database after root wrote to it.
    files = [Path(str(messages_host.chat_db) + s) for s in ("", "-wal", "-shm")]
    owners = {(f.stat().st_uid, f.stat().st_gid) for f in files if f.exists()}
    assert owners == {(USER_UID, 20)}


def _settled(chat_db, count):
    rows = messages.outgoing_after(chat_db, 0)
    return len(rows) == count and all(r["is_sent"] or r["error"] for r in rows) and rows


def test_files_messages_can_reach_are_sent_others_fail_after_osascript_succeeded(messages_host):
    home = messages_host.root / "Users/edge_t"
    staged = home / "Library/Messages/Attachments-staging/c1/1-photo.jpg"
    pictures = home / "Pictures/2-note.txt"
    private = home / "Pictures/3-secret.txt"
    outside = messages_host.root / "tmp/4-outside.txt"
    for path, content in ((staged, b"\xff\xd8jpeg"), (pictures, b"note"), (private, b"x")):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        os.chown(path, USER_UID, 20)
    private.chmod(0o600)
    os.chown(private, 0, 0)  # in reach of nobody but root
    outside.parent.mkdir(parents=True, exist_ok=True)
    outside.write_text("tmp")
    names = ["/" + str(p.relative_to(messages_host.root)) for p in (staged, pictures, outside)]

    result = osascript(
        messages_host,
        "handle",
        FRIEND,
        "text",
        "caption",
        "file",
        names[0],
        "file",
        names[1],
        "file",
        names[2],
        "unknown-kind",
        "sent as text, as the script's else does",
    )

    assert result.returncode == 0, result.stderr
    rows = wait_until(lambda: _settled(messages_host.chat_db, 5), timeout=3)
    assert [r["text"] for r in rows] == [
        "caption",
        "\ufffc",
        "\ufffc",
        "\ufffc",
        "sent as text, as the script's else does",
    ]
    assert [bool(r["error"]) for r in rows] == [False, False, False, True, False]
    conn = messages.connect(messages_host.chat_db)
    try:
        attachments = conn.execute(
            "SELECT m.guid, a.filename, a.transfer_name, a.total_bytes, m.cache_has_attachments "
            "FROM attachment a JOIN message_attachment_join j ON j.attachment_id = a.ROWID "
            "JOIN message m ON m.ROWID = j.message_id ORDER BY m.ROWID"
        ).fetchall()
    finally:
        conn.close()
    assert [(a[2], a[3], a[4]) for a in attachments] == [
        ("1-photo.jpg", 6, 1),
        ("2-note.txt", 4, 1),
        ("4-outside.txt", 0, 1),
    ]
    # Messages keeps its own copy of what it sent, under the user's Attachments folder.
    copy = home / attachments[0][1].replace("~/", "", 1)
    assert copy.read_bytes() == b"\xff\xd8jpeg" and copy.stat().st_uid == USER_UID

    # In reach, but not readable by the user: Messages cannot send it either.
    unreadable = "/" + str(private.relative_to(messages_host.root))
    assert osascript(messages_host, "handle", FRIEND, "file", unreadable).returncode == 0
    last = wait_until(lambda: _settled(messages_host.chat_db, 6), timeout=3)[-1]
    assert last["error"] == messages.SEND_FAILED_ERROR


def test_an_odd_pair_fails_where_the_script_reads_the_missing_item(messages_host):
    result = osascript(messages_host, "handle", FRIEND, "text")

    assert result.returncode == 1
    assert "Can't get item 4 of" in result.stderr and "(-1719)" in result.stderr
    assert messages.outgoing_after(messages_host.chat_db, 0) == []
