"""archety.edge.persona_shard run in-process on an SQLite backend database, under ansible-test.

The fuller suite, against SQLite and PostgreSQL, is tests/modules/test_persona_shard.py; these
cases keep the module's contract checked from the built collection tree.
"""

import json
import sqlite3

import pytest
from ansible.module_utils.testing import patch_module_args
from ansible_collections.archety.edge.plugins.modules import persona_shard
from ansible_collections.archety.edge.tests.unit.plugins.modules.backend_schema import SCHEMA


@pytest.fixture
def dsn(tmp_path):
    path = tmp_path / "backend.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(SCHEMA)
    return f"sqlite://{path}"


def run(dsn, capsys, check_mode=False, **args):
    args.update(dsn=dsn, _ansible_check_mode=check_mode)
    with patch_module_args(args), pytest.raises(SystemExit):
        persona_shard.main()
    return json.loads(capsys.readouterr().out)


def rows(dsn):
    with sqlite3.connect(dsn[len("sqlite://") :]) as conn:
        return conn.execute("SELECT * FROM persona_shards ORDER BY shard_id").fetchall()


NEW = {"shard_id": "sage-01", "phone_number": "+15551230001", "host": "mini-01"}


def test_creates_the_row_once(dsn, capsys):
    created = run(dsn, capsys, **NEW)
    assert created["changed"] is True and created["shard"]["state"] == "provisioning"
    assert created["token"].startswith("edge_")

    again = run(dsn, capsys, **NEW)
    assert again["changed"] is False and "token" not in again
    assert len(rows(dsn)) == 1


def test_check_mode_writes_nothing(dsn, capsys):
    preview = run(dsn, capsys, check_mode=True, **NEW)
    assert preview["changed"] is True and "token" not in preview
    assert rows(dsn) == []


def test_disabled_cannot_go_straight_to_active(dsn, capsys):
    run(dsn, capsys, **NEW)
    run(dsn, capsys, shard_id="sage-01", state="disabled")
    before = rows(dsn)

    refused = run(dsn, capsys, shard_id="sage-01", state="active")

    assert refused["failed"] is True
    assert refused["msg"] == (
        "state cannot go from disabled to active: shard sage-01 in state disabled can only go "
        "to provisioning."
    )
    assert rows(dsn) == before


def test_phone_not_e164_is_refused_before_the_database_is_opened(dsn, capsys):
    refused = run(dsn, capsys, **{**NEW, "phone_number": "555-0100"})
    assert refused["failed"] is True
    assert refused["msg"].startswith("phone_number '555-0100' is not E.164")
    assert rows(dsn) == []
