"""The schema and the `edge-backend` command: init-db, serve, and their refusals."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from edge_backend.db import Database
from edge_backend.schema import SCHEMA_VERSION, SchemaError, current_version, migrate
from edge_backend.tokens import hash_token, new_token

TABLES = (
    "persona_shards",
    "user_assignments",
    "edge_commands",
    "inbound_events",
    "canary_checks",
    "edge_schema",
)


def edge_backend(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edge_backend", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_token_helpers_match_the_collection():
    token = new_token()
    assert token.startswith("edge_") and len(token) == len("edge_") + 43
    assert new_token() != token
    # The collection's persona_shard module stores this same digest for this token.
    assert (
        hash_token("edge_abc") == "6ad7c2ca24d410534b4214b385dec1ac90985c1ef58f5b43672b07908a8db78b"
    )


def test_migrate_creates_every_table_and_is_idempotent(dsn):
    db = Database.open(dsn)
    try:
        assert current_version(db) == 0
        assert migrate(db) == (0, SCHEMA_VERSION)
        assert migrate(db) == (SCHEMA_VERSION, SCHEMA_VERSION)
        with db.transaction() as tx:
            assert all(tx.table_exists(name) for name in TABLES)
            assert tx.all("SELECT version FROM edge_schema") == [{"version": SCHEMA_VERSION}]
    finally:
        db.close()


def test_migrate_keeps_existing_rows(database, shards):
    shards.add("sage-01")
    assert migrate(database) == (SCHEMA_VERSION, SCHEMA_VERSION)
    assert shards.row("sage-01")["state"] == "active"


def test_state_outside_the_four_is_refused_by_the_database(database, shards):
    with pytest.raises(Exception, match="(?i)check"):
        shards.add("sage-01", state="draining")


def test_newer_schema_is_refused(database):
    with database.transaction() as tx:
        tx.execute("UPDATE edge_schema SET version = ?", (SCHEMA_VERSION + 1,))
    with pytest.raises(SchemaError, match="upgrade edge-backend"):
        migrate(database)


def test_init_db_command_is_idempotent(dsn):
    first = edge_backend("init-db", "--dsn", dsn)
    assert first.returncode == 0, first.stderr
    assert f"from version 0 to {SCHEMA_VERSION}" in first.stdout
    second = edge_backend("init-db", "--dsn", dsn)
    assert second.returncode == 0, second.stderr
    assert "nothing to do" in second.stdout


@pytest.mark.parametrize(
    ("dsn", "words"),
    [
        ("sqlite://relative.db", "absolute file path"),
        ("sqlite:///no/such/folder/backend.db", "/no/such/folder does not exist"),
        ("mysql://root@127.0.0.1/edge", "not supported"),
        ("postgresql://postgres@127.0.0.1:notaport/edge", "malformed"),
        ("postgresql://postgres@127.0.0.1:5432", "names no database"),
        ("", "no database given"),
    ],
)
def test_bad_dsn_is_one_sentence_and_exit_2(dsn, words):
    result = edge_backend("init-db", "--dsn", dsn)
    assert result.returncode == 2
    assert words in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_unreachable_postgresql_is_exit_2_and_hides_the_password():
    port = free_port()  # nothing listens on it once the probe socket is closed
    result = edge_backend("init-db", "--dsn", f"postgresql://edge:hunter2@127.0.0.1:{port}/edge")
    assert result.returncode == 2
    assert "cannot reach the PostgreSQL database" in result.stderr
    assert "hunter2" not in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_refuses_a_non_loopback_host(tmp_path: Path):
    token_file = tmp_path / "admin-token"
    token_file.write_text("admin-secret\n")
    result = edge_backend(
        "serve", "--dsn", f"sqlite:///{tmp_path}/b.db", "--host", "0.0.0.0",
        "--admin-token-file", str(token_file),
    )  # fmt: skip
    assert result.returncode == 2
    assert "not a loopback address" in result.stderr
    assert not (tmp_path / "b.db").exists()


def test_serve_refuses_a_missing_admin_token_file(tmp_path: Path):
    result = edge_backend(
        "serve", "--dsn", f"sqlite:///{tmp_path}/b.db",
        "--admin-token-file", str(tmp_path / "absent"),
    )  # fmt: skip
    assert result.returncode == 2
    assert "cannot read the admin token file" in result.stderr


def test_serve_runs_creates_the_schema_and_stops_on_sigterm(tmp_path: Path):
    token_file = tmp_path / "admin-token"
    token_file.write_text("admin-secret\n")
    token_file.chmod(0o600)
    port = free_port()
    dsn = f"sqlite:///{tmp_path}/backend.db"
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "edge_backend", "serve", "--dsn", dsn, "--port", str(port),
             "--admin-token-file", str(token_file)],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(base + "/healthz", timeout=2) as response:
                    assert json.load(response)["schema_version"] == SCHEMA_VERSION
                break
            except (urllib.error.URLError, ConnectionError):
                assert process.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, "edge-backend did not start in 15 s"
                time.sleep(0.1)

        request = urllib.request.Request(
            base + "/admin/shards", headers={"Authorization": "Bearer admin-secret"}
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert json.load(response) == {"shards": []}
        request = urllib.request.Request(base + "/admin/shards")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=5)
        assert refused.value.code == 401
        assert "admin token" in json.load(refused.value)["error"]
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert process.returncode == 0
    log_text = log_path.read_text()
    assert "listening on 127.0.0.1" in log_text
    assert "admin-secret" not in log_text
    assert os.path.exists(tmp_path / "backend.db")
