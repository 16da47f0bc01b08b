"""edge-lab phone replay end to end: rows of a real Mac's chat.db, replayed into a served shard's
account, are decoded and forwarded by its relay (running under the lab's launchd) to the
reference backend.

Needs root. Runs on the lab of test_lab_core (127.0.77.N, backend port 18877), brought up by its
fixture. The shard is added with add_shard.yml as an operator would, its backend URL pointing at
a loopback pass-through that keeps the events the backend received, since the reference backend
stores only their guids.
"""

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from replay_support import (
    ALICE,
    BOB,
    BODY,
    BODY_TEXT,
    CAROL,
    CORPUS,
    DIRECT_GUID,
    FRIEND,
    GROUP_GUID,
    OLD_DATE,
    build_source,
)
from test_lab_core import LAB_DIR, edge_lab, lab, lab_env  # noqa: F401

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"),
    pytest.mark.skipif(not BODY.is_file(), reason=f"real Messages data not present at {CORPUS}"),
]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SHARD = {
    "persona": "replay",
    "shard_number": "1",
    "phone_number": "+15557770021",
    "target_host": "mini-02",
}
SHARD_ID = "replay-01"
USER = "edge_replay_01"
PLAYBOOK_TIMEOUT_S = 600
FORWARD_TIMEOUT_S = 90


class RecordingPassThrough:
    """Passes each request on to the backend unchanged and keeps the inbound events it carried."""

    def __init__(self, backend_url):
        self.events = {}
        keep = self.events

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                self._pass_on()

            def do_POST(self):
                self._pass_on()

            def _pass_on(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if self.path == "/edge/inbound" and body:
                    for event in json.loads(body)["events"]:
                        keep[event["guid"]] = event
                headers = {
                    name: value
                    for name, value in self.headers.items()
                    if name.lower() in ("authorization", "content-type")
                }
                request = urllib.request.Request(
                    backend_url + self.path, data=body, method=self.command, headers=headers
                )
                try:
                    # Long enough for the relay's long poll of the commands.
                    with urllib.request.urlopen(request, timeout=90) as answer:
                        status, payload = answer.status, answer.read()
                        kind = answer.headers.get("Content-Type")
                except urllib.error.HTTPError as error:
                    status, payload, kind = error.code, error.read(), error.headers["Content-Type"]
                self.send_response(status)
                self.send_header("Content-Type", kind or "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass  # requests carry the shard's token: nothing of them is printed

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc_info):
        self.server.shutdown()
        self.server.server_close()


def add_shard(env, backend_url):
    argv = [str(BIN / "ansible-playbook"), "-i", str(Path(env["EDGE_LAB_INVENTORY"]) / "hosts.yml")]
    argv.append("playbooks/add_shard.yml")
    for key, value in {**SHARD, "backend_url": backend_url}.items():
        argv += ["-e", f"{key}={value}"]
    return subprocess.run(
        argv,
        cwd=REPO,
        env=dict(env, PATH=f"{BIN}:{env['PATH']}", ANSIBLE_NOCOLOR="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=PLAYBOOK_TIMEOUT_S,
    )


@pytest.fixture(scope="module")
def served_shard(lab):  # noqa: F811
    """Shard replay-01 on mini-02, serving through the recording pass-through."""
    with RecordingPassThrough(f"http://127.0.0.1:{lab['EDGE_LAB_BACKEND_PORT']}") as passing:
        first = add_shard(lab, passing.url)
        if first.returncode != 0:
            assert "waiting for a person" in first.stdout, first.stdout
            host = SHARD["target_host"]
            edge_lab(lab, "gui", "login", host, USER)
            edge_lab(lab, "imessage", "signin", host, USER, SHARD["phone_number"])
            edge_lab(lab, "grant", "fda", host)
            edge_lab(lab, "grant", "automation", host, USER)
            again = add_shard(lab, passing.url)
            assert again.returncode == 0, again.stdout
        yield passing


def backend(sql, args=()):
    with sqlite3.connect(LAB_DIR / "backend.db") as db:
        return db.execute(sql, args).fetchall()


def iso(apple_nanoseconds):
    moment = datetime(2001, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=apple_nanoseconds / 1e9)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def test_replayed_rows_reach_the_backend_decoded_with_their_group(
    lab,  # noqa: F811  (the fixtures of test_lab_core, imported)
    served_shard,  # noqa: F811
    tmp_path,
):
    source = build_source(tmp_path / "source", BODY.read_bytes())
    guids = source.guids
    forwarded = ["text", "body", "group", "reaction", "photo", "heic"]

    replayed = edge_lab(lab, "phone", "replay", "--to", SHARD["phone_number"], str(source.path))
    assert "7 rows, 2 chats, 4 handles, 2 attachments added" in replayed.stdout

    deadline = time.monotonic() + FORWARD_TIMEOUT_S
    while not all(guids[name] in served_shard.events for name in forwarded):
        assert time.monotonic() < deadline, f"forwarded so far: {list(served_shard.events)}"
        time.sleep(0.2)
    events = {name: served_shard.events.get(guids[name]) for name in [*forwarded, "mine"]}

    body = events["body"]
    assert (body["type"], body["text"], body["handle"]) == ("message", BODY_TEXT, FRIEND)
    assert (body["chat_guid"], body["is_group"]) == (DIRECT_GUID, False)
    assert body["date"] == iso(OLD_DATE + 10**9)  # the old date, as the Mac wrote it
    group = events["group"]
    assert (group["text"], group["chat_guid"], group["is_group"]) == ("hello all", GROUP_GUID, True)
    assert group["participants"] == sorted([ALICE, BOB, CAROL])
    reaction = events["reaction"]
    assert (reaction["type"], reaction["reaction"], reaction["action"]) == (
        "reaction",
        "love",
        "add",
    )
    assert reaction["target_guid"] == guids["group"] and reaction["handle"] == BOB
    assert [a["transfer_name"] for a in events["photo"]["attachments"]] == ["photo.jpeg"]
    assert [a["transfer_name"] for a in events["heic"]["attachments"]] == ["IMG_0001.HEIC"]
    assert events["mine"] is None  # the account's own message is passed over

    accepted = backend("SELECT guid FROM inbound_events WHERE shard_id = ?", (SHARD_ID,))
    assert {guids[name] for name in forwarded} <= {guid for (guid,) in accepted}
    replies = [
        json.loads(payload)
        for (payload,) in backend(
            "SELECT payload FROM edge_commands WHERE shard_id = ?", (SHARD_ID,)
        )
    ]
    answered = {(r.get("chat_guid"), bubble) for r in replies for bubble in r["bubbles"]}
    assert (DIRECT_GUID, f"echo: {BODY_TEXT}") in answered
    assert (GROUP_GUID, "echo: hello all") in answered
