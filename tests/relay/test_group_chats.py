"""Group chats end to end, against the lab's Messages: a group message comes in with its
members, and the reply goes back to the group by its chat guid, confirmed from chat.db.

The lab's launchd plays Messages.app on a temporary host root, and the relay sends through the
lab's osascript stand-in, run as the shard's user as the relay's own child is on a Mac. Both
need root (launchd starts jobs as their users; the stand-in is run under the user's uid).
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from relay_support import ROOT, RunningRelay, relay_settings, wait_for

LAB = ROOT / "lab"
if str(LAB) not in sys.path:
    sys.path.insert(0, str(LAB))

from edge_lab import hoststate, launchd, messages  # noqa: E402
from edge_lab.layout import package_for_every_user  # noqa: E402

# The lab's stand-ins run on the host's own Python, as on the lab's Macs, not the relay's.
LAB_PYTHON = "/usr/bin/python3"
SETPRIV = shutil.which("setpriv") or "/usr/bin/setpriv"
USER = "edge_t"
USER_UID = 60123
STAFF_GID = 20
PHONE = "+15551230001"
ALICE = "+15550002222"
BOB = "+15550003333"

pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab's launchd starts jobs as their users"),
    pytest.mark.skipif(
        not (os.access(LAB_PYTHON, os.X_OK) and os.access(SETPRIV, os.X_OK)),
        reason=f"{LAB_PYTHON} and setpriv are needed to run the lab's stand-ins as the user",
    ),
]


class LabMac:
    """A host root with the lab's launchd (and Messages behind it), one shard user logged in
    at the GUI, signed in to iMessage, with Automation granted."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="edge-relay-group-"))
        self.root.chmod(0o755)  # the user's osascript reaches the socket through it
        # The user's osascript imports the lab from here, not from the checkout, which its
        # owner alone may enter.
        self.lab_package = package_for_every_user()
        self.socket = self.root / "launchd.sock"
        self.env = dict(
            os.environ,
            EDGE_LAB_ROOT=str(self.root),
            EDGE_LAB_LAUNCHD_SOCKET=str(self.socket),
            PYTHONPATH=str(LAB),
        )
        (self.root / "etc").mkdir()
        (self.root / "etc/passwd").write_text(
            "root:x:0:0:System Administrator:/var/root:/bin/sh\n"
            f"{USER}:x:{USER_UID}:{STAFF_GID}:Sage 01:/Users/{USER}:/bin/zsh\n"
        )
        (self.root / "etc/group").write_text("wheel:x:0:root\nstaff:x:20:root\n")
        messages_dir = self.root / f"Users/{USER}/Library/Messages"
        messages_dir.mkdir(parents=True)
        for folder in (messages_dir, messages_dir.parent, messages_dir.parents[1]):
            os.chown(folder, USER_UID, STAFF_GID)
        self.chat_db = messages.create_chat_db(messages_dir / "chat.db", USER_UID, STAFF_GID)

        def signed_in(state: dict) -> None:
            state["imessage"] = {USER: PHONE}
            state["automation"] = [USER]

        hoststate.update(self.root, signed_in)
        log = self.root / "launchd.log"
        with open(log, "wb") as stderr:
            self.daemon = subprocess.Popen(
                [LAB_PYTHON, "-m", "edge_lab.launchd", "--socket", str(self.socket)],
                env=self.env,
                stderr=stderr,
            )
        deadline = time.monotonic() + 10
        while not self.socket.exists():
            if time.monotonic() > deadline or self.daemon.poll() is not None:
                said = log.read_text(errors="replace")[-2000:]
                self.stop()
                raise AssertionError(f"the lab's launchd did not start:\n{said}")
            time.sleep(0.05)
        launchd.request(self.socket, "gui_login", uid=USER_UID)

    def osascript(self, folder: Path) -> Path:
        """/usr/bin/osascript of this Mac, run as the shard's user with the lab's stand-in."""
        path = folder / "osascript"
        # The relay runs as root here, its script in the checkout: the user's osascript reads
        # a copy beside the lab package, as on a Mac it reads the user's own release.
        script = self.lab_package / "send_messages.applescript"
        path.write_text(
            "#!/bin/sh\n"
            f'cp "$1" {script} && shift || exit 1\n'
            f"exec {SETPRIV} --reuid={USER_UID} --regid={STAFF_GID} --clear-groups "
            f"/usr/bin/env EDGE_LAB_ROOT={self.root} EDGE_LAB_LAUNCHD_SOCKET={self.socket} "
            f"PYTHONPATH={self.lab_package} {LAB_PYTHON} -m edge_lab.standins.osascript "
            f'{script} "$@"\n'
        )
        path.chmod(0o755)
        return path

    def stop(self) -> None:
        if self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
            try:
                self.daemon.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait(timeout=5)
        shutil.rmtree(self.root, ignore_errors=True)
        shutil.rmtree(self.lab_package, ignore_errors=True)


@pytest.fixture
def lab_mac():
    mac = LabMac()
    try:
        yield mac
    finally:
        mac.stop()


def own_rows(chat_db: Path) -> list:
    """(text, handle_id, is_sent, error, chat guid) of every outgoing row, oldest first."""
    conn = sqlite3.connect(str(chat_db))
    try:
        return conn.execute(
            "SELECT m.text, m.handle_id, m.is_sent, m.error, c.guid FROM message m "
            "JOIN chat_message_join j ON j.message_id = m.ROWID JOIN chat c ON c.ROWID = j.chat_id "
            "WHERE m.is_from_me = 1 ORDER BY m.ROWID"
        ).fetchall()
    finally:
        conn.close()


@pytest.mark.parametrize("shape", ["iMessage;+;chat100200300400500600", None])
async def test_a_group_message_comes_in_with_its_members_and_the_reply_goes_to_the_group(
    lab_mac, backend, tmp_path, shape
):
    group = messages.add_group_chat(
        lab_mac.chat_db, members=[BOB, ALICE], account_phone=PHONE, guid=shape
    )
    messages.add_incoming(lab_mac.chat_db, sender=ALICE, text="just us", account_phone=PHONE)
    settings = relay_settings(tmp_path, backend.url, lab_mac.chat_db, lab_mac.osascript(tmp_path))
    async with RunningRelay(settings) as relay:
        await wait_for(lambda: relay.inbound.ledger.initialised, what="the first start")
        said = messages.add_incoming(
            lab_mac.chat_db, sender=BOB, text="who is here?", account_phone=PHONE, chat_guid=group
        )
        await wait_for(lambda: [e for e in backend.events() if e["guid"] == said], 10, "it")
        [event] = [e for e in backend.events() if e["guid"] == said]
        backend.queue_command(
            {
                "id": "reply-1",
                "type": "send",
                "chat_guid": event["chat_guid"],
                "bubbles": ["all three of us", "and you"],
            }
        )
        await wait_for(lambda: "reply-1" in backend.results, 15, "the reply's result")

    assert event["chat_guid"] == group and group.startswith(shape or "any;+;chat")
    assert event["is_group"] is True and event["handle"] == BOB
    assert event["participants"] == [ALICE, BOB] and event["text"] == "who is here?"
    result = backend.results["reply-1"]
    assert result["status"] == "delivered", result
    # One row per bubble, in the group and nowhere else, to nobody in particular, sent.
    assert own_rows(lab_mac.chat_db) == [
        ("all three of us", 0, 1, 0, group),
        ("and you", 0, 1, 0, group),
    ]


async def test_a_group_unknown_to_messages_fails_and_writes_nothing(lab_mac, backend, tmp_path):
    settings = relay_settings(tmp_path, backend.url, lab_mac.chat_db, lab_mac.osascript(tmp_path))
    settings["send_queue"]["retries"] = 0
    async with RunningRelay(settings):
        backend.queue_command(
            {"id": "lost-1", "type": "send", "chat_guid": "any;+;chat999", "bubbles": ["hello?"]}
        )
        await wait_for(lambda: "lost-1" in backend.results, 15, "the result")
    result = backend.results["lost-1"]
    assert result["status"] == "failed"
    assert "does not know this chat" in result["detail"] and "-1728" in result["detail"]
    assert own_rows(lab_mac.chat_db) == []
