"""The configuration file: every fault named with its fix, and the CLI's exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from edge_relay import __version__
from edge_relay.config import ConfigError, parse
from relay_support import relay_settings


@pytest.fixture
def good(tmp_path: Path) -> dict:
    osascript = tmp_path / "osascript"
    osascript.write_text("#!/bin/sh\n")
    osascript.chmod(0o755)
    return relay_settings(tmp_path, "http://127.0.0.1:8787", tmp_path / "chat.db", osascript)


def problems(data: dict) -> list:
    with pytest.raises(ConfigError) as caught:
        parse(data)
    return caught.value.problems


def test_a_good_configuration_is_read_with_its_values(good):
    config = parse(good)
    assert config.shard_id == "sage-01"
    assert config.phone_number == "+15551230001"
    assert config.send_queue.backoff_s == (0.1, 0.1, 0.1)
    assert config.rate_limit.per_minute == 120
    assert config.read_token().startswith("tok-")


def test_defaults_follow_the_design(good):
    for key in ("rate_limit", "send_queue", "poll_interval_s", "log_level"):
        del good[key]
    config = parse(good)
    assert config.rate_limit.per_minute == 120
    assert config.rate_limit.per_recipient_per_minute == 30
    assert config.rate_limit.first_contact_per_hour == 20
    assert config.send_queue.max_depth == 500
    assert config.send_queue.retries == 3
    assert config.send_queue.backoff_s == (2.0, 4.0, 8.0)
    assert config.send_queue.expiry_s == 120
    assert config.send_queue.tick_ms == 200
    assert config.poll_interval_s == 5.0


@pytest.mark.parametrize(
    "change, expected",
    [
        (
            {"phone_number": "5550100"},
            "phone_number '5550100' is not E.164 (+ and 8 to 15 digits)",
        ),
        # Unquoted in YAML the + vanishes and the number becomes an integer.
        ({"phone_number": 15551230001}, "phone_number '15551230001' is not E.164"),
        ({"health": {"host": "0.0.0.0", "port": 47101}}, "health.host must be a loopback"),
        ({"health": {"host": "203.0.113.5", "port": 47101}}, "health.host must be a loopback"),
        ({"shard_id": "sage-1"}, "shard_id 'sage-1' must be <persona>-<NN>"),
        ({"shard_id": "sage-00"}, "shard_id 'sage-00' must be <persona>-<NN>"),
        ({"shard_id": "echo-01"}, "shard_id 'echo-01' does not belong to persona 'sage'"),
        ({"persona": "Sage"}, "persona 'Sage' must be a lower-case letter"),
        ({"backend": {"url": "ftp://x", "token_file": "/nonexistent"}}, "backend.url 'ftp://x'"),
        ({"rate_limit": {"per_minute": 0}}, "rate_limit.per_minute is 0; it must be at least 1"),
        ({"send_queue": {"retries": 3, "backoff_s": [2, 4]}}, "send_queue.backoff_s must be"),
        ({"poll_interval_s": "fast"}, "poll_interval_s must be a number, not 'fast'"),
        ({"log_level": "LOUD"}, "log_level 'LOUD' must be one of"),
        ({"osascript": "/nonexistent/osascript"}, "osascript '/nonexistent/osascript' is not"),
        ({"colour": "blue"}, "colour is not a known setting"),
    ],
)
def test_each_fault_is_named_with_its_fix(good, change, expected):
    good.update(change)
    found = problems(good)
    assert any(expected in p for p in found), found


def test_missing_required_fields_are_all_listed(good):
    for key in ("shard_id", "persona", "phone_number", "chat_db", "state_dir", "backend"):
        del good[key]
    found = "\n".join(problems(good))
    for key in ("shard_id", "persona", "phone_number", "chat_db", "state_dir", "backend"):
        assert f"{key} is required" in found


def test_a_token_file_others_can_read_is_refused(good):
    token = Path(good["backend"]["token_file"])
    token.chmod(0o644)
    [problem] = problems(good)
    assert "readable or writable by group or others (mode 0644)" in problem
    assert "chmod 600" in problem


def test_a_missing_or_empty_token_file_is_refused(good, tmp_path):
    good["backend"]["token_file"] = str(tmp_path / "absent")
    assert "does not exist" in problems(good)[0]
    empty = tmp_path / "empty"
    empty.write_text("\n")
    empty.chmod(0o600)
    good["backend"]["token_file"] = str(empty)
    assert "is empty" in problems(good)[0]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edge_relay", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_check_config_exits_0_for_a_usable_file(good, tmp_path):
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(good))
    result = run_cli("check-config", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert "usable for shard sage-01" in result.stdout


def test_check_config_exits_2_listing_every_problem(good, tmp_path):
    good["phone_number"] = "5550100"
    good["health"]["host"] = "198.51.100.4"
    Path(good["backend"]["token_file"]).chmod(0o640)
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(good))
    result = run_cli("check-config", "--config", str(path))
    assert result.returncode == 2
    assert "3 problem(s)" in result.stderr
    assert "phone_number '5550100' is not E.164" in result.stderr
    assert "health.host must be a loopback address" in result.stderr
    assert "chmod 600" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_config_on_broken_yaml_says_so(tmp_path):
    path = tmp_path / "config.yml"
    path.write_text("shard_id: [sage\n")
    result = run_cli("check-config", "--config", str(path))
    assert result.returncode == 2
    assert "is not valid YAML at line" in result.stderr


def test_run_with_a_bad_file_changes_nothing_and_exits_2(good, tmp_path):
    good["phone_number"] = "5550100"
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(good))
    result = run_cli("run", "--config", str(path))
    assert result.returncode == 2
    assert not Path(good["state_dir"]).exists()


def test_version():
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"edge-relay {__version__}"
