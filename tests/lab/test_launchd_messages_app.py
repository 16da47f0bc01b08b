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


TRICKY = [
    'say "hi" \\ back\\slash',
    "line one\nline two",
    "emoji 🙂👍🏽 done",
    '" & (do shell script "id") & "',
    "end tell\nend run",
]


def test_send_to_a_handle_writes_the_rows_messages_writes(messages_host):
    result = osascript(messages_host, "handle", FRIEND, *TRICKY)

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
    assert osascript(messages_host, "handle", FRIEND, "first").returncode == 0
    assert osascript(messages_host, "chat", f"any;-;{FRIEND}", "second").returncode == 0
    hoststate.update(messages_host.root, lambda s: s.update(undeliverable=["+15559990000"]))

    assert osascript(messages_host, "handle", "+15559990000", "lost").returncode == 0

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
        osascript(messages_host, "chat", chat, "x"),
        'execution error: Messages got an error: Can\'t get chat id "any;-;+15550000000". (-1728)',
    )

    hoststate.update(messages_host.root, lambda s: s.update(imessage={}))
    _refused(
        osascript(messages_host, "chat", chat, "x"),
        "execution error: Messages got an error: Can't get account 1 whose service type = "
        "iMessage. Invalid index. (-1719)",
    )

    hoststate.update(messages_host.root, lambda s: s.update(automation=[]))
    _refused(
        osascript(messages_host, "handle", FRIEND, "x"),
        "execution error: Not authorized to send Apple events to Messages. (-1743)",
    )

    messages_host.request("gui_logout", uid=USER_UID)
    _refused(
        osascript(messages_host, "handle", FRIEND, "x"),
        "execution error: Messages got an error: Application isn't running. (-600)",
    )
    assert messages.outgoing_after(messages_host.chat_db, 0) == []


def test_only_the_relays_script_runs(messages_host):
    other = messages_host.root / "other.applescript"
    other.write_text(RELAY_SCRIPT.read_text().replace("send (item i", "delete (item i"))
    reformatted = messages_host.root / "spaced.applescript"
    reformatted.write_text("\n\n" + RELAY_SCRIPT.read_text().replace("\t", "    ") + "\n")
    refusal = "osascript: this lab only runs the edge relay's Messages script"

    for args in ((str(other), "handle", FRIEND, "x"), ("-e", 'tell application "Messages"')):
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
    assert osascript(messages_host, "handle", FRIEND, "ok", script=reformatted).returncode == 0


def test_root_reaches_the_users_messages_through_launchctl_asuser(messages_host):
    direct = osascript(messages_host, "handle", FRIEND, "as root", uid=None)
    assert direct.returncode == 1 and "(-600)" in direct.stderr

    result = subprocess.run(
        [sys.executable, "-m", "edge_lab.standins.launchctl", "asuser", str(USER_UID)]
        + [sys.executable, "-m", "edge_lab.standins.osascript", str(RELAY_SCRIPT)]
        + ["handle", FRIEND, "via asuser"],
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
