"""archety.edge.persona_shard_info run in-process on an SQLite backend database, under
ansible-test: its filters and the shard a new user of a persona would be assigned to.

The fuller suite, against SQLite and PostgreSQL, is tests/modules/test_persona_shard.py.
"""

import json
import sqlite3

import pytest
from ansible.module_utils.testing import patch_module_args
from ansible_collections.archety.edge.plugins.modules import persona_shard_info
from ansible_collections.archety.edge.tests.unit.plugins.modules.backend_schema import SCHEMA

STAMP = "2026-12-03T12:00:00+00:00"
FLEET = [
    ("sage-01", "+15551230001", "mini-01", "active", 9),
    ("sage-02", "+15551230002", "mini-02", "active", 9),
    ("sage-03", "+15551230003", "mini-02", "retiring", 0),
    ("wren-01", "+15551230004", "mini-01", "provisioning", 0),
]


@pytest.fixture
def dsn(tmp_path):
    path = tmp_path / "backend.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(SCHEMA)
        for shard_id, phone, host, state, users in FLEET:
            conn.execute(
                "INSERT INTO persona_shards (shard_id, persona, phone_number, agent_id, host, "
                "state, active_users, token_hash, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, 'hash', ?, ?)",
                (shard_id, shard_id[:4], phone, shard_id, host, state, users, STAMP, STAMP),
            )
    return f"sqlite://{path}"


def run(dsn, capsys, **args):
    args.update(dsn=dsn)
    with patch_module_args(args), pytest.raises(SystemExit):
        persona_shard_info.main()
    return json.loads(capsys.readouterr().out)


def shard_ids(rows):
    return [row["shard_id"] for row in rows]


def test_filters_combine(dsn, capsys):
    assert shard_ids(run(dsn, capsys, state="active")["shards"]) == ["sage-01", "sage-02"]
    assert shard_ids(run(dsn, capsys, host="mini-02", persona="sage")["shards"]) == [
        "sage-02",
        "sage-03",
    ]
    nothing = run(dsn, capsys, host="mini-02", state="provisioning")
    assert nothing["shards"] == [] and nothing["exists"] is False


def test_assignment_tie_goes_to_the_lowest_shard_id_never_the_hash(dsn, capsys):
    result = run(dsn, capsys, persona="sage")
    assert result["assignment"]["shard_id"] == "sage-01"
    assert "token_hash" not in result["assignment"]
    assert all("token_hash" not in row for row in result["shards"])


def test_no_active_shard_means_no_assignment(dsn, capsys):
    result = run(dsn, capsys, persona="wren")
    assert shard_ids(result["shards"]) == ["wren-01"]
    assert result["assignment"] is None


def test_unknown_state_is_refused(dsn, capsys):
    result = run(dsn, capsys, state="paused")
    assert result["failed"] is True
    allowed = "value of state must be one of: provisioning, active, retiring, disabled"
    assert allowed in result["msg"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (dict(shard_id="BAD"), "shard_id 'BAD' can match no shard: a shard id is <persona>-<NN>"),
        (dict(persona="No Such"), "persona 'No Such' can match no shard: a persona is 2 to 20"),
        (dict(phone_number="15551230001"), "phone_number '15551230001' can match no shard"),
    ],
    ids=["shard-id", "persona", "phone-number"],
)
def test_a_filter_no_shard_could_match_is_refused(dsn, capsys, args, message):
    result = run(dsn, capsys, **args)
    assert result["failed"] is True
    assert message in result["msg"]
    assert "queries" not in result
