"""What a serving shard looks like on its Mac, checked over SSH after add_shard.yml."""

import json
import os
import sqlite3
from pathlib import Path

import pytest

USER = "edge_sage_01"
LABEL = "com.archety.edge.relay.sage-01"
PLIST = f"/Users/{USER}/Library/LaunchAgents/{LABEL}.plist"
SUPPORT = f"/Users/{USER}/Library/Application Support/edge-relay"
LAB_DIR = Path(os.environ.get("EDGE_LAB_DIR", "/tmp/edge-lab-tests/molecule-add_shard/lab"))


def test_user_exists_and_is_hidden(host):
    record = host.run(f"dscl . -read /Users/{USER}")
    assert record.rc == 0, record.stderr
    assert "IsHidden: 1" in record.stdout
    assert host.run(f"dseditgroup -o checkmember -m {USER} admin").rc == 67


def test_home_populated_from_the_template(host):
    for folder in ("Desktop", "Documents", "Library/Preferences"):
        assert host.file(f"/Users/{USER}/{folder}").is_directory


def test_plist_is_valid_with_keepalive(host):
    with host.sudo():
        assert host.run(f"plutil -lint {PLIST}").rc == 0
        plist = json.loads(host.check_output(f"plutil -convert json -o - {PLIST}"))
    assert plist["KeepAlive"] is True
    assert plist["RunAtLoad"] is True
    assert all(arg.startswith("/") or not arg.startswith("~") for arg in plist["ProgramArguments"])
    assert plist["ProgramArguments"][0].startswith("/Users/")
    mode = host.file(PLIST).mode
    assert mode & 0o022 == 0, oct(mode)


def test_relay_runs_as_the_shard_user(host):
    relays = [p for p in host.process.filter(user=USER) if "edge-relay" in p.args]
    assert relays, "no edge-relay process of " + USER


def test_launchd_reports_it_running(host):
    with host.sudo():
        uid = host.user(USER).uid
        out = host.check_output(f"launchctl print gui/{uid}/{LABEL}")
    assert "state = running" in out


def test_health_is_healthy(host):
    with host.sudo():
        config = host.file(f"{SUPPORT}/config.yml").content_string
    port = next(
        int(line.split(":")[1]) for line in config.splitlines() if line.strip().startswith("port:")
    )
    body = host.check_output(
        '/usr/bin/python3 -c "import urllib.request;'
        f"print(urllib.request.urlopen('http://127.0.0.1:{port}/health').read().decode())\""
    )
    health = json.loads(body)
    assert health["status"] == "healthy"
    assert set(health["send_queue"]) >= {"depth", "totalEnqueued", "totalDelivered", "totalDropped"}


@pytest.mark.parametrize("name", ["config.yml", "token"])
def test_config_and_token_are_private(host, name):
    with host.sudo():
        f = host.file(f"{SUPPORT}/{name}")
        assert f.exists
        assert f.user == USER
        assert f.mode == 0o600


def test_token_never_in_the_plist(host):
    with host.sudo():
        token = host.file(f"{SUPPORT}/token").content_string.strip()
        assert token
        assert token not in host.file(PLIST).content_string
        assert token not in host.file(f"{SUPPORT}/config.yml").content_string


def test_shard_row_is_active():
    with sqlite3.connect(LAB_DIR / "backend.db") as db:
        row = db.execute(
            "SELECT state, phone_number, host FROM persona_shards WHERE shard_id = 'sage-01'"
        ).fetchone()
    assert row == ("active", "+15551230001", "mini-01")
