"""Helpers of the relay's tests: a real chat.db, a backend double, a fake osascript."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sqlite3
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest
import pytest_asyncio
from aiohttp import web

ROOT = Path(__file__).resolve().parents[2]
REPO_SCHEMA = ROOT / "lab" / "edge_lab" / "data" / "chat_db_schema.sql"
CORPUS = ROOT.parent / "shared" / "corpus" / "imessage"
CORPUS_SCHEMA = CORPUS / "chat_db_schema.sql"
TOKEN = "tok-" + "s3cr3t" * 6
NS = 1_000_000_000
APPLE_EPOCH_UNIX = 978307200


@pytest.fixture(scope="session")
def schema_sql() -> str:
    """Messages' table definitions: the repository's copy, else the shared corpus."""
    for path in (REPO_SCHEMA, CORPUS_SCHEMA):
        if path.is_file():
            return path.read_text(encoding="utf-8")
    pytest.skip(f"no chat.db schema: neither {REPO_SCHEMA} nor {CORPUS_SCHEMA} exists")


@pytest.fixture(scope="session")
def corpus() -> Path:
    folder = CORPUS / "attributed_body"
    if not folder.is_dir():
        pytest.skip(f"real Messages blobs not available: {folder} is absent")
    return CORPUS


def apple_now_ns() -> int:
    return int((time.time() - APPLE_EPOCH_UNIX) * NS)


class Messages:
    """Writes chat.db the way Messages does, through its own connection per change."""

    def __init__(self, path: Path, schema: str):
        self.path = path
        # Closed at once, as every connection here: a test decides who holds chat.db open.
        conn = sqlite3.connect(str(path))
        try:
            conn.executescript(schema)
        finally:
            conn.close()

    def _write(self, sql: str, params: tuple) -> int:
        conn = sqlite3.connect(str(self.path))
        try:
            with conn:
                return conn.execute(sql, params).lastrowid
        finally:
            conn.close()

    def handle(self, handle_id: str) -> int:
        conn = sqlite3.connect(str(self.path))
        try:
            row = conn.execute("SELECT ROWID FROM handle WHERE id = ?", (handle_id,)).fetchone()
        finally:
            conn.close()
        if row:
            return row[0]
        return self._write("INSERT INTO handle (id, service) VALUES (?, 'iMessage')", (handle_id,))

    def chat(self, handle_id: str) -> str:
        """A direct chat with `handle_id`, named the way recent macOS names it."""
        guid = f"any;-;{handle_id}"
        conn = sqlite3.connect(str(self.path))
        try:
            row = conn.execute("SELECT ROWID FROM chat WHERE guid = ?", (guid,)).fetchone()
        finally:
            conn.close()
        if not row:
            chat_rowid = self._write(
                "INSERT INTO chat (guid, style, chat_identifier, service_name) "
                "VALUES (?, 45, ?, 'iMessage')",
                (guid, handle_id),
            )
            self._write(
                "INSERT INTO chat_handle_join (chat_id, handle_id) VALUES (?, ?)",
                (chat_rowid, self.handle(handle_id)),
            )
        return guid

    def incoming(
        self,
        handle_id: str,
        text: Optional[str] = "hello",
        body: Optional[bytes] = None,
        date: Optional[int] = None,
        associated_type: int = 0,
        join: bool = True,
    ) -> str:
        guid = str(uuid.uuid4()).upper()
        chat_guid = self.chat(handle_id)
        self._write(
            "INSERT INTO message (guid, text, attributedBody, handle_id, service, date, "
            "is_from_me, associated_message_type) VALUES (?, ?, ?, ?, 'iMessage', ?, 0, ?)",
            (
                guid,
                text,
                body,
                self.handle(handle_id),
                apple_now_ns() if date is None else date,
                associated_type,
            ),
        )
        if join:
            self.join(guid, chat_guid)
        return guid

    def join(self, guid: str, chat_guid: str) -> None:
        """Files the message in its chat (Messages may do it after writing the message)."""
        self._write(
            "INSERT INTO chat_message_join (chat_id, message_id) "
            "SELECT c.ROWID, m.ROWID FROM chat c, message m WHERE c.guid = ? AND m.guid = ?",
            (chat_guid, guid),
        )

    def rows(self, sql: str, params: tuple = ()) -> List[tuple]:
        conn = sqlite3.connect(str(self.path))
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()


@pytest.fixture
def messages(tmp_path: Path, schema_sql: str) -> Messages:
    folder = tmp_path / "Messages"
    folder.mkdir()
    return Messages(folder / "chat.db", schema_sql)


FAKE_OSASCRIPT = textwrap.dedent(
    '''\
    #!{python}
    """Test stand-in for osascript: runs only the relay's Messages script.

    Behaviour comes from behaviour.json beside it: "send" writes the outgoing rows as Messages
    does; "error:<n>" fails like AppleScript error n; "row-error" writes rows with error set;
    "silent" exits 0 and writes nothing; "sleep:<s>" waits before sending. After mode and
    target come pairs of kind ("text" or "file") and value. A file part becomes a row whose
    text is U+FFFC with its attachment; a file outside ~/Library/Messages or ~/Pictures, or
    unreadable, is the row Messages marks failed while osascript still exits 0.
    """
    import json, os, sqlite3, sys, time, uuid

    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "behaviour.json")) as f:
        behaviour = json.load(f)
    with open(os.path.join(here, "calls.jsonl"), "a") as f:
        f.write(json.dumps(sys.argv[1:]) + "\\n")
    script = sys.argv[1]
    if open(script).read() != behaviour["expected_script"]:
        sys.stderr.write("osascript: this stand-in runs only the relay's Messages script\\n")
        sys.exit(1)
    mode, target, rest = sys.argv[2], sys.argv[3], sys.argv[4:]
    if len(rest) % 2 or any(kind not in ("text", "file") for kind in rest[::2]):
        sys.stderr.write(f"{{script}}: execution error: Can't get item. Invalid index. (-1719)\\n")
        sys.exit(1)
    parts = list(zip(rest[::2], rest[1::2]))
    action = behaviour["action"]
    if action.startswith("sleep:"):
        time.sleep(float(action.split(":")[1]))
        action = "send"
    if action.startswith("error:"):
        number = action.split(":")[1]
        sys.stderr.write(f"{{script}}: execution error: Messages got an error ({{number}})\\n")
        sys.exit(1)
    if action == "silent":
        sys.exit(0)
    conn = sqlite3.connect(behaviour["chat_db"])
    with conn:
        if mode == "chat":
            chat = conn.execute("SELECT ROWID, chat_identifier FROM chat WHERE guid = ?",
                                (target,)).fetchone()
        else:
            chat = conn.execute("SELECT ROWID, chat_identifier FROM chat "
                                "WHERE chat_identifier = ?", (target,)).fetchone()
            if chat is None:  # a first message to this handle opens the direct chat
                conn.execute("INSERT OR IGNORE INTO handle (id, service) "
                             "VALUES (?, 'iMessage')", (target,))
                conn.execute("INSERT INTO chat (guid, style, chat_identifier, service_name) "
                             "VALUES (?, 45, ?, 'iMessage')", ("any;-;" + target, target))
                chat = conn.execute("SELECT ROWID, chat_identifier FROM chat "
                                    "WHERE chat_identifier = ?", (target,)).fetchone()
        handle = conn.execute("SELECT ROWID FROM handle WHERE id = ?", (chat[1],)).fetchone()
        for kind, value in parts:
            error = 22 if action == "row-error" else 0
            text = value
            if kind == "file":
                text = "\\ufffc"
                reachable = "/Library/Messages/" in value or "/Pictures/" in value
                if not (reachable and os.access(value, os.R_OK)):
                    error = 22
                with open(os.path.join(here, "files.jsonl"), "a") as f:
                    f.write(json.dumps([value, open(value, "rb").read().hex()
                                        if os.access(value, os.R_OK) else None]) + "\\n")
            rowid = conn.execute(
                "INSERT INTO message (guid, text, handle_id, service, date, is_from_me, "
                "is_sent, is_delivered, error, cache_has_attachments) "
                "VALUES (?, ?, ?, 'iMessage', ?, 1, ?, ?, ?, ?)",
                (str(uuid.uuid4()).upper(), text, handle[0], 0,
                 0 if error else 1, 0 if error else 1, error, int(kind == "file"))).lastrowid
            conn.execute("INSERT INTO chat_message_join (chat_id, message_id) VALUES (?, ?)",
                         (chat[0], rowid))
    '''
)


class Osascript:
    """The fake osascript executable and its control file."""

    def __init__(self, folder: Path, chat_db: Path):
        from edge_relay.sender import SCRIPT_PATH

        folder.mkdir()
        self.path = folder / "osascript"
        self.path.write_text(FAKE_OSASCRIPT.format(python=sys.executable))
        self.path.chmod(0o755)
        self.folder = folder
        self.chat_db = chat_db
        self.expected_script = Path(SCRIPT_PATH).read_text()
        self.set("send")

    def set(self, action: str) -> None:
        behaviour = {
            "action": action,
            "chat_db": str(self.chat_db),
            "expected_script": self.expected_script,
        }
        (self.folder / "behaviour.json").write_text(json.dumps(behaviour))

    def files(self) -> List[List[Optional[str]]]:
        """[path, content in hex or None] of each file part Messages was asked to send."""
        log = self.folder / "files.jsonl"
        if not log.exists():
            return []
        return [json.loads(line) for line in log.read_text().splitlines()]

    def calls(self) -> List[List[str]]:
        log = self.folder / "calls.jsonl"
        if not log.exists():
            return []
        return [json.loads(line) for line in log.read_text().splitlines()]


@pytest.fixture
def osascript(tmp_path: Path, messages: Messages) -> Osascript:
    return Osascript(tmp_path / "bin", messages.path)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class BackendDouble:
    """An aiohttp server speaking the /edge contract, recording what the relay sent."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.registrations: List[Dict[str, Any]] = []
        self.heartbeats: List[Dict[str, Any]] = []
        self.inbound_batches: List[List[Dict[str, Any]]] = []
        self.results: Dict[str, Dict[str, Any]] = {}
        self.pending_commands: List[Dict[str, Any]] = []
        self.inbound_commands: List[Dict[str, Any]] = []
        self.refuse_guids: set = set()
        self.heartbeat_interval_s = 30
        self.shard_state = "active"
        self.auth_failures = 0
        self._runner: Optional[web.AppRunner] = None
        self._commands_ready = asyncio.Event()

    def _authorized(self, request: web.Request) -> bool:
        ok = request.headers.get("Authorization") == f"Bearer {TOKEN}"
        if not ok:
            self.auth_failures += 1
        return ok

    async def register(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"error": "unknown token"}, status=401)
        body = await request.json()
        self.registrations.append(body)
        return web.json_response(
            {
                "shard_id": body["agent_id"],
                "state": self.shard_state,
                "heartbeat_interval_s": self.heartbeat_interval_s,
            }
        )

    async def heartbeat(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"error": "unknown token"}, status=401)
        self.heartbeats.append(await request.json())
        return web.json_response({"ok": True, "state": self.shard_state})

    async def inbound(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"error": "unknown token"}, status=401)
        events = (await request.json())["events"]
        self.inbound_batches.append(events)
        accepted = [e["guid"] for e in events if e["guid"] not in self.refuse_guids]
        commands, self.inbound_commands = self.inbound_commands, []
        return web.json_response({"accepted": accepted, "commands": commands})

    async def commands(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"error": "unknown token"}, status=401)
        wait = min(float(request.query.get("wait", "0")), 30.0)
        if not self.pending_commands:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._commands_ready.wait(), wait)
        self._commands_ready.clear()
        commands, self.pending_commands = self.pending_commands, []
        return web.json_response({"commands": commands})

    async def result(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"error": "unknown token"}, status=401)
        self.results[request.match_info["command_id"]] = await request.json()
        return web.json_response({"ok": True})

    def queue_command(self, command: Dict[str, Any]) -> None:
        self.pending_commands.append(command)
        self._commands_ready.set()

    def events(self) -> List[Dict[str, Any]]:
        return [event for batch in self.inbound_batches for event in batch]

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/edge/register", self.register)
        app.router.add_post("/edge/heartbeat", self.heartbeat)
        app.router.add_post("/edge/inbound", self.inbound)
        app.router.add_get("/edge/commands", self.commands)
        app.router.add_post("/edge/commands/{command_id}/result", self.result)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()

    async def stop(self) -> None:
        if self._runner is not None:
            self._commands_ready.set()
            await self._runner.cleanup()
            self._runner = None


@pytest_asyncio.fixture
async def backend():
    double = BackendDouble()
    await double.start()
    yield double
    await double.stop()


def write_token(folder: Path) -> Path:
    path = folder / "token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    return path


def fake_launchctl(folder: Path) -> Path:
    """launchctl answering `print gui/<uid>` with the status in launchctl.exit (0: logged in).

    113 is what macOS's launchctl answers for a domain that does not exist.
    """
    path = folder / "launchctl"
    status = folder / "launchctl.exit"
    status.write_text("0")
    path.write_text(
        f'#!/bin/sh\n[ "$1" = print ] || exit 64\nexit "$(cat "{status}")"\n',
    )
    path.chmod(0o755)
    return path


def relay_settings(tmp_path: Path, backend_url: str, chat_db: Path, osascript_path: Path) -> dict:
    """A configuration for fast tests: short ticks, polls and back-offs."""
    return {
        "shard_id": "sage-01",
        "persona": "sage",
        "phone_number": "+15551230001",
        "host": "mini-01",
        "backend": {
            "url": backend_url,
            "token_file": str(write_token(tmp_path)),
            "timeout_s": 2,
        },
        "chat_db": str(chat_db),
        "state_dir": str(tmp_path / "state"),
        "health": {"host": "127.0.0.1", "port": free_port()},
        "rate_limit": {"per_minute": 120},
        "send_queue": {
            "max_depth": 500,
            "retries": 3,
            "backoff_s": [0.1, 0.1, 0.1],
            "expiry_s": 120,
            "tick_ms": 20,
            "confirm_s": 1.0,
        },
        "poll_interval_s": 0.05,
        "osascript": str(osascript_path),
        "launchctl": str(fake_launchctl(tmp_path)),
        "log_level": "INFO",
    }


async def wait_for(predicate, timeout_s: float = 5.0, what: str = "condition") -> None:
    """Polls `predicate` until it holds; fails the test with `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
def settings(tmp_path: Path, backend: BackendDouble, messages: Messages, osascript: Osascript):
    return relay_settings(tmp_path, backend.url, messages.path, osascript.path)


class RunningRelay:
    """A relay run inside the test's event loop, drained on exit."""

    def __init__(self, settings: dict):
        from edge_relay.config import parse
        from edge_relay.relay import Relay

        self.relay = Relay(parse(settings))
        self.task: Optional[asyncio.Task] = None

    async def __aenter__(self):
        self.task = asyncio.ensure_future(self.relay.run())
        await wait_for(lambda: self.relay.registered or self.task.done(), 5, "registration")
        return self.relay

    async def __aexit__(self, *exc_info) -> None:
        self.relay.request_drain()
        assert await asyncio.wait_for(self.task, 15) == 0
