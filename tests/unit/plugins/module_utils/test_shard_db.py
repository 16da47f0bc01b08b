"""module_utils.shard_db: opening the backend database and naming what went wrong."""

import sqlite3

import pytest
from ansible_collections.archety.edge.plugins.module_utils import shard_db


class Module:
    """The two calls ShardDB makes of AnsibleModule, failing as fail_json does."""

    class Failed(Exception):
        pass

    def fail_json(self, **result):
        raise self.Failed(result)


def test_a_folder_where_the_database_should_be_is_named(tmp_path):
    with pytest.raises(shard_db.ShardDBError) as err:
        shard_db.ShardDB(Module(), f"sqlite://{tmp_path}")
    assert str(err.value).startswith(f"cannot open the SQLite database {tmp_path}: ")
    assert str(err.value).endswith("Check the path and that this user may read and write the file.")


def test_postgresql_without_psycopg_names_the_library(monkeypatch):
    monkeypatch.setattr(shard_db, "psycopg", None)
    monkeypatch.setattr(shard_db, "PSYCOPG_IMPORT_ERROR", "ImportError: no psycopg")
    with pytest.raises(Module.Failed) as failed:
        shard_db.ShardDB(Module(), "postgresql://edge@127.0.0.1:5432/backend")
    result = failed.value.args[0]
    assert "psycopg (version 3)" in result["msg"]
    assert result["exception"] == "ImportError: no psycopg"


def test_rollback_of_a_lost_connection_is_quiet(tmp_path):
    path = tmp_path / "backend.db"
    sqlite3.connect(path).close()
    db = shard_db.ShardDB(Module(), f"sqlite://{path}")
    db.conn.close()
    db.rollback()
    assert db.queries == []


def test_describe_dsn_never_names_the_password():
    named = shard_db.describe_dsn("postgresql://edge:hunter2@127.0.0.1:5432/backend")
    assert named == "the PostgreSQL database backend on 127.0.0.1:5432 as edge"
    assert shard_db.describe_dsn("postgresql:///backend") == (
        "the PostgreSQL database backend on the local socket"
    )
    assert shard_db.describe_dsn("postgresql://127.0.0.1") == (
        "the PostgreSQL database (default) on 127.0.0.1"
    )
