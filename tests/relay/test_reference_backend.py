"""The relay against the reference backend (`edge-backend`), when it is installed.

The backend double in relay_support speaks the contract as the relay reads it; this test checks
that reading against the project's executable specification: a message in, its echo reply out.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timezone

import pytest
from relay_support import TOKEN, RunningRelay, free_port, relay_settings, wait_for

pytest.importorskip("edge_backend", reason="the reference backend (backend/) is not installed")

pytestmark = pytest.mark.asyncio

HANDLE = "+15550001111"


@pytest.fixture
def reference_backend(tmp_path):
    db = tmp_path / "backend.db"
    dsn = f"sqlite:///{db}"
    subprocess.run(
        [sys.executable, "-m", "edge_backend", "init-db", "--dsn", dsn],
        check=True,
        capture_output=True,
        timeout=30,
    )
    stamp = datetime.now(timezone.utc).isoformat()
    conn = sqlite3.connect(str(db))
    with conn:
        conn.execute(
            "INSERT INTO persona_shards (shard_id, persona, phone_number, agent_id, state, "
            "token_hash, created_at, updated_at) VALUES (?, ?, ?, ?, 'active', ?, ?, ?)",
            (
                "sage-01",
                "sage",
                "+15551230001",
                "sage-01",
                hashlib.sha256(TOKEN.encode()).hexdigest(),
                stamp,
                stamp,
            ),
        )
    conn.close()
    admin = tmp_path / "admin-token"
    admin.write_text("admin-" + "x" * 32 + "\n")
    admin.chmod(0o600)
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edge_backend",
            "serve",
            "--dsn",
            dsn,
            "--port",
            str(port),
            "--admin-token-file",
            str(admin),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(url + "/healthz", timeout=1).read()
                break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail(f"edge-backend did not start: {proc.stderr.read()}")
                time.sleep(0.1)
        yield url, db
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stderr.close()


async def test_a_message_in_gets_its_echo_reply_out(
    reference_backend, tmp_path, messages, osascript
):
    url, db = reference_backend
    settings = relay_settings(tmp_path, url, messages.path, osascript.path)
    async with RunningRelay(settings) as relay:
        await asyncio.sleep(0.3)
        messages.incoming(HANDLE, text="hello there")
        await wait_for(
            lambda: relay.queue.figures()["totalDelivered"] == 1,
            timeout_s=15,
            what="the echo reply to be delivered",
        )
        await wait_for(lambda: not relay.store.pending_results(), what="the result reported")
        report = relay.report()
    sent = messages.rows("SELECT text, is_sent FROM message WHERE is_from_me = 1")
    assert sent == [("echo: hello there", 1)]
    assert report["status"] == "healthy", json.dumps(report)
    conn = sqlite3.connect(str(db))
    try:
        statuses = conn.execute("SELECT status FROM edge_commands").fetchall()
        version = conn.execute("SELECT relay_version FROM persona_shards").fetchone()[0]
    finally:
        conn.close()
    assert statuses == [("delivered",)]
    assert version == report["version"]


async def test_an_event_the_backend_refuses_is_parked_and_the_others_recorded(
    reference_backend, tmp_path, messages, osascript
):
    url, db = reference_backend
    settings = relay_settings(tmp_path, url, messages.path, osascript.path)
    async with RunningRelay(settings) as relay:
        await wait_for(lambda: relay.inbound.ledger.initialised, what="the first start")
    # Written while the relay is stopped, so that they go in one batch.
    first = messages.incoming(HANDLE, text="before")
    # A tapback whose target Messages did not record: the backend cannot take it.
    refused = messages.incoming(HANDLE, text=None, associated_type=2000)
    after = messages.incoming(HANDLE, text="after")
    other = messages.incoming("+15550002222", text="elsewhere")
    async with RunningRelay(settings) as relay:
        await wait_for(
            lambda: {first, refused, after, other} <= set(relay.inbound.ledger.seen),
            timeout_s=15,
            what="every event handled",
        )
        report = relay.report()
    conn = sqlite3.connect(str(db))
    try:
        recorded = {guid for (guid,) in conn.execute("SELECT guid FROM inbound_events")}
    finally:
        conn.close()
    assert recorded == {first, after, other}
    check = report["checks"]["backend_refused"]
    assert check["parked"] == 1 and check["oldest_guid"] == refused
    state = sqlite3.connect(str(tmp_path / "state" / "relay-state.db"))
    try:
        [(status, reason)] = state.execute("SELECT status, reason FROM inbound_parked").fetchall()
    finally:
        state.close()
    assert status == 400
    assert reason == (
        f"event 0 ({refused}): field 'target_guid' is required and must be a non-empty string"
    )
