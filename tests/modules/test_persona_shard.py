"""archety.edge.persona_shard and persona_shard_info against SQLite and PostgreSQL."""

import hashlib
import os
import re
import sqlite3
import uuid

import pytest
from ansible_collections.archety.edge.plugins.modules import persona_shard, persona_shard_info
from ansible_collections.archety.edge.tests.unit.plugins.modules.backend_schema import (
    SCHEMA,
)
from module_support import run_module

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00$")
PG_DSN = os.environ.get("EDGE_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")


def no_runner(argv, data):
    raise AssertionError("persona_shard runs no command")


class SqliteBackend:
    def __init__(self, path):
        self.path = str(path)
        self.dsn = "sqlite://" + self.path
        with sqlite3.connect(self.path) as conn:
            conn.executescript(SCHEMA)

    def rows(self, sql, *params):
        with sqlite3.connect(self.path) as conn:
            conn.row_factory = sqlite3.Row
            return [dict(row) for row in conn.execute(sql.replace("%s", "?"), params)]

    def run(self, sql, *params):
        with sqlite3.connect(self.path) as conn:
            conn.execute(sql.replace("%s", "?"), params)

    def close(self):
        pass


def unavailable(reason):
    """Skip, saying why; under CI a missing PostgreSQL is a failure, never a quiet skip."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: PostgreSQL tests must run)")
    pytest.skip(reason)


def need_psycopg():
    try:
        import psycopg
    except ImportError:
        unavailable("psycopg is not installed here")
    return psycopg


class PostgresBackend:
    def __init__(self):
        psycopg = need_psycopg()
        try:
            self.admin = psycopg.connect(PG_DSN, connect_timeout=3, autocommit=True)
        except psycopg.OperationalError as err:
            unavailable(f"PostgreSQL at {PG_DSN} does not answer: {err}")
        # One schema per test keeps tests apart from each other and from other users of `test`.
        self.schema = "edge_modules_" + uuid.uuid4().hex[:12]
        self.admin.execute(f"CREATE SCHEMA {self.schema}")
        self.admin.execute(f"SET search_path TO {self.schema}")
        self.admin.execute(SCHEMA)
        self.dsn = f"{PG_DSN}?options=-csearch_path%3D{self.schema}"

    def rows(self, sql, *params):
        from psycopg.rows import dict_row

        with self.admin.cursor(row_factory=dict_row) as cursor:
            return cursor.execute(sql, params).fetchall()

    def run(self, sql, *params):
        self.admin.execute(sql, params)

    def close(self):
        self.admin.execute(f"DROP SCHEMA {self.schema} CASCADE")
        self.admin.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request, tmp_path):
    db = SqliteBackend(tmp_path / "backend.db") if request.param == "sqlite" else PostgresBackend()
    yield db
    db.close()


def shard(backend, check_mode=False, **args):
    args["dsn"] = backend.dsn
    return run_module(persona_shard.main, args, no_runner, check_mode=check_mode, diff=True)


def info(backend, **args):
    args["dsn"] = backend.dsn
    return run_module(persona_shard_info.main, args, no_runner)


def stored(backend, shard_id="sage-01"):
    rows = backend.rows("SELECT * FROM persona_shards WHERE shard_id = %s", shard_id)
    return rows[0] if rows else None


NEW = {"shard_id": "sage-01", "phone_number": "+15551230001", "host": "mini-01"}


def test_creates_row_with_hashed_token_then_rerun_changes_nothing(backend):
    result = shard(backend, **NEW)

    assert result["changed"] is True
    token = result["token"]
    assert token.startswith("edge_") and len(token) > 40
    row = stored(backend)
    assert row["token_hash"] == hashlib.sha256(token.encode()).hexdigest()
    assert row["state"] == "provisioning"
    assert row["agent_id"] == "sage-01" and row["persona"] == "sage"
    assert row["capacity"] == 150 and row["active_users"] == 0
    assert ISO_UTC.match(row["created_at"]) and row["created_at"] == row["updated_at"]
    assert result["shard"]["host"] == "mini-01"
    assert "token_hash" not in result["shard"]
    assert row["token_hash"] not in repr(result)
    assert result["diff"]["before"] == {}
    assert any(q.startswith("INSERT INTO persona_shards") for q in result["queries"])

    again = shard(backend, **NEW)
    assert again["changed"] is False
    assert "token" not in again
    assert stored(backend) == row


def test_check_mode_reports_the_insert_and_writes_nothing(backend):
    result = shard(backend, check_mode=True, **NEW)
    assert result["changed"] is True
    assert "token" not in result
    assert result["shard"]["state"] == "provisioning"
    assert result["queries"][-1].startswith("INSERT INTO persona_shards")
    assert stored(backend) is None


def test_lifecycle_moves_and_refuses_illegal_transitions(backend):
    shard(backend, **NEW)
    assert shard(backend, shard_id="sage-01", state="active")["changed"] is True
    assert stored(backend)["state"] == "active"

    refused = shard(backend, shard_id="sage-01", state="provisioning")
    assert refused.failed
    assert refused["msg"] == (
        "state cannot go from active to provisioning: shard sage-01 in state active can only "
        "go to retiring or disabled."
    )
    assert stored(backend)["state"] == "active"

    for state in ("retiring", "active", "disabled", "provisioning"):
        assert shard(backend, shard_id="sage-01", state=state)["changed"] is True
    assert stored(backend)["state"] == "provisioning"


def test_new_shard_must_start_in_provisioning(backend):
    result = shard(backend, state="active", **NEW)
    assert result.failed
    assert result["msg"] == (
        "state cannot go from new to active: a new shard can only go to provisioning."
    )
    assert stored(backend) is None


def test_diff_shows_the_change_never_the_hash(backend):
    shard(backend, **NEW)
    result = shard(backend, shard_id="sage-01", state="active", host="mini-02", capacity=200)
    assert result["diff"]["before"]["state"] == "provisioning"
    assert result["diff"]["after"]["state"] == "active"
    assert result["diff"]["after"]["host"] == "mini-02"
    assert result["diff"]["after"]["capacity"] == 200
    assert "token_hash" not in result["diff"]["before"]
    assert "token_hash" not in result["diff"]["after"]


def test_check_mode_update_writes_nothing(backend):
    shard(backend, **NEW)
    before = stored(backend)
    result = shard(backend, check_mode=True, shard_id="sage-01", state="active")
    assert result["changed"] is True
    assert result["shard"]["state"] == "active"
    assert result["queries"][-1].startswith("UPDATE persona_shards SET state = :state")
    assert stored(backend) == before


def test_rotate_token_replaces_the_hash(backend):
    first = shard(backend, **NEW)["token"]
    result = shard(backend, shard_id="sage-01", rotate_token=True)
    assert result["changed"] is True
    assert result["token"] != first
    assert stored(backend)["token_hash"] == hashlib.sha256(result["token"].encode()).hexdigest()


def test_phone_taken_by_another_shard_is_refused(backend):
    shard(backend, **NEW)
    result = shard(backend, shard_id="sage-02", phone_number="+15551230001")
    assert result.failed
    assert result["msg"] == (
        "phone_number +15551230001 is already the number of shard sage-01: each shard has "
        "its own number. Give this shard another one."
    )
    assert stored(backend, "sage-02") is None


def test_changing_the_phone_of_a_shard_is_refused(backend):
    shard(backend, **NEW)
    result = shard(backend, shard_id="sage-01", phone_number="+15551239999")
    assert result.failed
    assert "a shard keeps its number" in result["msg"]
    assert stored(backend)["phone_number"] == "+15551230001"


def test_absent_deletes_the_row_unless_users_are_assigned(backend):
    shard(backend, **NEW)
    backend.run(
        "INSERT INTO user_assignments VALUES (%s, %s, %s, %s)",
        "sage",
        "+15557654321",
        "sage-01",
        "2026-12-03T12:00:00+00:00",
    )
    refused = shard(backend, shard_id="sage-01", state="absent")
    assert refused.failed
    assert "still has 1 assigned users" in refused["msg"]
    assert stored(backend) is not None

    backend.run("DELETE FROM user_assignments")
    preview = shard(backend, check_mode=True, shard_id="sage-01", state="absent")
    assert preview["changed"] is True and stored(backend) is not None
    removed = shard(backend, shard_id="sage-01", state="absent")
    assert removed["changed"] is True and removed["shard"] == {}
    assert stored(backend) is None
    assert shard(backend, shard_id="sage-01", state="absent")["changed"] is False


def test_info_filters_and_hides_the_hash(backend):
    shard(backend, **NEW)
    shard(backend, shard_id="sage-02", phone_number="+15551230002", host="mini-02")
    shard(backend, shard_id="wren-01", phone_number="+15551230003", host="mini-01")

    everything = info(backend)
    assert [row["shard_id"] for row in everything["shards"]] == ["sage-01", "sage-02", "wren-01"]
    assert all("token_hash" not in row for row in everything["shards"])
    assert [r["shard_id"] for r in info(backend, persona="sage")["shards"]] == [
        "sage-01",
        "sage-02",
    ]
    by_host = info(backend, host="mini-01", persona="wren")
    assert by_host["exists"] is True and by_host["shards"][0]["shard_id"] == "wren-01"
    nobody = info(backend, phone_number="+15550000000")
    assert nobody["exists"] is False and nobody["shards"] == []


@pytest.mark.parametrize(
    "args, message",
    [
        (dict(NEW, phone_number="5550100"), "phone_number '5550100' is not E.164"),
        (dict(NEW, shard_id="sage-1"), "shard_id 'sage-1' is not <persona>-<NN>"),
        (dict(NEW, shard_id="sage-00"), "shard_id 'sage-00' is not <persona>-<NN>"),
        (
            dict(NEW, persona="wren"),
            "persona 'wren' does not match shard_id 'sage-01', whose persona is 'sage'",
        ),
        (dict(NEW, capacity=0), "capacity 0 must be at least 1."),
        (dict(NEW, state="paused"), "value of state must be one of"),
        ({"shard_id": "sage-01"}, "phone_number is required to create shard sage-01."),
    ],
)
def test_bad_input_names_the_field_and_writes_nothing(backend, args, message):
    result = shard(backend, **args)
    assert result.failed
    assert message in result["msg"]
    assert backend.rows("SELECT * FROM persona_shards") == []


def test_missing_table_says_to_run_init_db(tmp_path):
    path = tmp_path / "empty.db"
    sqlite3.connect(path).close()
    result = run_module(persona_shard.main, dict(NEW, dsn=f"sqlite://{path}"), no_runner)
    assert result.failed
    assert result["msg"] == (
        f"table persona_shards not found in the SQLite database {path}: run "
        "`edge-backend init-db --dsn ...` first."
    )


def test_missing_sqlite_file_is_not_created(tmp_path):
    path = tmp_path / "nothing.db"
    result = run_module(persona_shard.main, dict(NEW, dsn=f"sqlite://{path}"), no_runner)
    assert result.failed
    assert f"cannot open the SQLite database {path}" in result["msg"]
    assert not path.exists()


def test_unreachable_postgresql_is_a_sentence_without_the_password():
    need_psycopg()
    # Port 9 (discard) on loopback: nothing listens there, the connection is refused at once.
    dsn = "postgresql://edge:hunter2@127.0.0.1:9/backend"
    result = run_module(persona_shard_info.main, {"dsn": dsn}, no_runner)
    assert result.failed
    assert result["msg"].startswith(
        "cannot connect to the PostgreSQL database backend on 127.0.0.1:9 as edge:"
    )
    assert "hunter2" not in repr(result)
    assert "Traceback" not in result["msg"]


def test_dsn_of_unknown_kind_is_refused():
    result = run_module(persona_shard_info.main, {"dsn": "mysql://x@127.0.0.1/db"}, no_runner)
    assert result.failed
    assert "dsn is neither sqlite:///absolute/path.db nor postgresql://" in result["msg"]


def table(backend):
    return backend.rows("SELECT * FROM persona_shards ORDER BY shard_id")


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"state": "active"},
            "state cannot go from disabled to active: shard sage-01 in state disabled can only "
            "go to provisioning.",
        ),
        ({"state": "paused"}, "value of state must be one of"),
        ({"phone_number": "+1 555 123 0001"}, "phone_number '+1 555 123 0001' is not E.164"),
        (
            {"shard_id": "sage-03", "phone_number": "+15551230002"},
            "phone_number +15551230002 is already the number of shard sage-02",
        ),
        ({"capacity": -1}, "capacity -1 must be at least 1."),
    ],
    ids=["disabled-to-active", "unknown-state", "phone-not-e164", "phone-taken", "capacity"],
)
def test_bad_change_to_an_existing_shard_leaves_every_row_as_it_was(backend, change, message):
    shard(backend, **NEW)
    shard(backend, shard_id="sage-02", phone_number="+15551230002", host="mini-02")
    shard(backend, shard_id="sage-01", state="disabled")
    before = table(backend)

    result = shard(backend, **dict({"shard_id": "sage-01"}, **change))

    assert result.failed
    assert message in result["msg"]
    assert "token" not in result
    assert table(backend) == before


def test_unreachable_postgresql_writes_nothing_and_names_the_problem(backend):
    need_psycopg()
    before = table(backend)
    # Port 9 (discard) on loopback: nothing listens there, the connection is refused at once.
    result = run_module(
        persona_shard.main,
        dict(NEW, shard_id="sage-03", dsn="postgresql://edge:hunter2@127.0.0.1:9/backend"),
        no_runner,
    )
    assert result.failed
    assert result["msg"].startswith("cannot connect to the PostgreSQL database backend on")
    assert "Check that the database is running and that the dsn is right." in result["msg"]
    assert "hunter2" not in repr(result) and "token" not in result
    assert table(backend) == before


def test_missing_postgresql_fails_under_ci_and_skips_with_its_reason_elsewhere(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="no server here .CI=true"):
        unavailable("no server here")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="no server here"):
        unavailable("no server here")


def in_state(backend, state):
    """sage-01 (and sage-02, its neighbour) with sage-01 brought to `state` by legal moves."""
    shard(backend, **NEW)
    shard(backend, shard_id="sage-02", phone_number="+15551230002", host="mini-02")
    path = {
        "provisioning": [],
        "active": ["active"],
        "retiring": ["active", "retiring"],
        "disabled": ["disabled"],
    }[state]
    for step in path:
        assert not shard(backend, shard_id="sage-01", state=step).failed
    assert stored(backend)["state"] == state


ALLOWED = {
    "provisioning": "active or retiring or disabled",
    "active": "retiring or disabled",
    "retiring": "active or disabled",
    "disabled": "provisioning",
}
ILLEGAL = [
    ("active", "provisioning"),
    ("retiring", "provisioning"),
    ("disabled", "active"),
    ("disabled", "retiring"),
]


@pytest.mark.parametrize("current, wanted", ILLEGAL, ids=[f"{a}-to-{b}" for a, b in ILLEGAL])
def test_illegal_transition_names_both_states_and_writes_nothing(backend, current, wanted):
    in_state(backend, current)
    before = table(backend)

    for check_mode in (True, False):
        result = shard(backend, check_mode=check_mode, shard_id="sage-01", state=wanted)
        assert result.failed
        assert result["msg"] == (
            f"state cannot go from {current} to {wanted}: shard sage-01 in state {current} can "
            f"only go to {ALLOWED[current]}."
        )
    assert table(backend) == before


def test_every_legal_transition_is_taken(backend):
    in_state(backend, "provisioning")
    for wanted in ("retiring", "active", "disabled", "provisioning", "active"):
        result = shard(backend, shard_id="sage-01", state=wanted)
        assert not result.failed, result["msg"]
        assert stored(backend)["state"] == wanted


@pytest.mark.parametrize(
    "args, message",
    [
        (dict(NEW, persona="Sage"), "persona 'Sage' is not 2 to 20 lower-case letters"),
        (dict(NEW, agent_id="  "), "agent_id is empty: leave it out to use the shard id."),
        (dict(NEW, phone_number="+0551230001"), "phone_number '+0551230001' is not E.164"),
        (dict(NEW, phone_number="+1555"), "phone_number '+1555' is not E.164"),
        (dict(NEW, phone_number="+1555123000100000"), "is not E.164"),
    ],
    ids=["persona-format", "agent-id-empty", "leading-zero", "too-short", "too-long"],
)
def test_more_bad_input_is_refused_before_writing(backend, args, message):
    result = shard(backend, **args)
    assert result.failed
    assert message in result["msg"]
    assert table(backend) == []


def test_agent_id_of_another_shard_is_refused_on_create_and_on_change(backend):
    shard(backend, **NEW)
    before = table(backend)
    taken = "agent_id sage-01 is already used by shard sage-01: give this shard its own agent id"
    created = shard(backend, shard_id="sage-02", phone_number="+15551230002", agent_id="sage-01")
    assert created.failed and taken in created["msg"]
    assert table(backend) == before

    shard(backend, shard_id="sage-02", phone_number="+15551230002")
    before = table(backend)
    changed = shard(backend, shard_id="sage-02", agent_id="sage-01")
    assert changed.failed and taken in changed["msg"]
    assert table(backend) == before


def test_check_mode_create_returns_statements_and_diff_and_writes_nothing(backend):
    result = shard(backend, check_mode=True, **NEW)

    assert result["changed"] is True
    assert result["diff"]["before"] == {}
    after = result["diff"]["after"]
    assert after["shard_id"] == "sage-01" and after["state"] == "provisioning"
    assert after["phone_number"] == "+15551230001" and after["capacity"] == 150
    assert result["shard"] == after
    assert "token_hash" not in after and "token" not in result
    assert result["queries"][0] == "SELECT * FROM persona_shards WHERE shard_id = :shard_id"
    assert result["queries"][-1] == (
        "INSERT INTO persona_shards (shard_id, persona, phone_number, agent_id, host, state, "
        "capacity, token_hash, created_at, updated_at) VALUES (:shard_id, :persona, "
        ":phone_number, :agent_id, :host, :state, :capacity, :token_hash, :created_at, "
        ":updated_at)"
    )
    assert table(backend) == []


def test_check_mode_update_returns_the_update_and_its_diff(backend):
    shard(backend, **NEW)
    before = table(backend)

    result = shard(backend, check_mode=True, shard_id="sage-01", state="active", host="mini-03")

    assert result["changed"] is True
    assert result["diff"]["before"]["state"] == "provisioning"
    assert result["diff"]["before"]["host"] == "mini-01"
    assert result["diff"]["after"]["state"] == "active"
    assert result["diff"]["after"]["host"] == "mini-03"
    assert result["queries"][-1] == (
        "UPDATE persona_shards SET state = :state, host = :host, updated_at = :updated_at "
        "WHERE shard_id = :shard_id"
    )
    assert table(backend) == before


def test_check_mode_rotation_and_removal_write_nothing(backend):
    shard(backend, **NEW)
    before = table(backend)

    rotation = shard(backend, check_mode=True, shard_id="sage-01", rotate_token=True)
    assert rotation["changed"] is True and "token" not in rotation
    assert rotation["queries"][-1] == (
        "UPDATE persona_shards SET token_hash = :token_hash, updated_at = :updated_at "
        "WHERE shard_id = :shard_id"
    )

    removal = shard(backend, check_mode=True, shard_id="sage-01", state="absent")
    assert removal["changed"] is True
    assert removal["diff"]["before"]["shard_id"] == "sage-01"
    assert removal["diff"]["after"] == {}
    assert removal["queries"][-1] == "DELETE FROM persona_shards WHERE shard_id = :shard_id"
    assert table(backend) == before


def test_unchanged_row_is_not_rewritten(backend):
    shard(backend, **NEW)
    before = table(backend)
    result = shard(backend, **dict(NEW, persona="sage", capacity=150, state="provisioning"))
    assert result["changed"] is False
    assert not any(q.startswith(("UPDATE", "INSERT")) for q in result["queries"])
    assert result["diff"]["before"] == result["diff"]["after"]
    assert table(backend) == before


def test_capacity_left_out_keeps_the_rows_capacity(backend):
    shard(backend, **dict(NEW, capacity=200))
    result = shard(backend, shard_id="sage-01", state="active")
    assert result["changed"] is True
    assert stored(backend)["capacity"] == 200
    assert shard(backend, shard_id="sage-01", capacity=120)["shard"]["capacity"] == 120
    assert stored(backend)["capacity"] == 120


def test_rotate_token_with_absent_is_ignored_with_a_warning(backend):
    shard(backend, **NEW)
    result = shard(backend, shard_id="sage-01", state="absent", rotate_token=True)
    assert result["changed"] is True and "token" not in result
    assert result.warning_texts == [
        "rotate_token is ignored with state=absent: the row and its token are gone."
    ]
    assert stored(backend) is None


def test_sqlite_in_a_missing_folder_is_named_and_nothing_is_made(tmp_path):
    folder = tmp_path / "gone"
    path = folder / "backend.db"
    result = run_module(persona_shard.main, dict(NEW, dsn=f"sqlite://{path}"), no_runner)
    assert result.failed
    assert result["msg"] == (
        f"cannot open the SQLite database {path}: its folder {folder} does not exist. Check the "
        "path in dsn; it must be the database edge-backend runs with."
    )
    assert not folder.exists()


def test_relative_sqlite_path_is_refused(tmp_path):
    result = run_module(persona_shard.main, dict(NEW, dsn="sqlite://backend.db"), no_runner)
    assert result.failed
    assert result["msg"] == (
        "dsn sqlite:// must name an absolute path, as in sqlite:///srv/backend.db."
    )


def test_sqlalchemys_four_slash_sqlite_dsn_names_the_same_file(tmp_path):
    backend = SqliteBackend(tmp_path / "backend.db")
    result = run_module(persona_shard.main, dict(NEW, dsn="sqlite:///" + backend.path), no_runner)
    assert not result.failed, result["msg"]
    assert [row["shard_id"] for row in backend.rows("SELECT shard_id FROM persona_shards")] == [
        NEW["shard_id"]
    ]


def test_a_database_without_user_assignments_is_named_on_removal(tmp_path):
    path = tmp_path / "partial.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(SCHEMA.split("CREATE TABLE user_assignments")[0])
    dsn = f"sqlite://{path}"
    run_module(persona_shard.main, dict(NEW, dsn=dsn), no_runner)
    result = run_module(
        persona_shard.main, {"dsn": dsn, "shard_id": "sage-01", "state": "absent"}, no_runner
    )
    assert result.failed
    assert result["msg"] == (
        f"the SQLite database {path} refused a query: no such table: user_assignments"
    )
    assert result["queries"][-1].startswith("SELECT COUNT(*) AS users FROM user_assignments")
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM persona_shards").fetchone() == (1,)


def test_a_refused_write_is_a_sentence_and_rolls_back(backend, monkeypatch):
    shard(backend, **NEW)
    before = table(backend)
    # Another writer took the number between this module's check and its insert: the
    # database's UNIQUE constraint refuses the row, and nothing of the run stays.
    monkeypatch.setattr(persona_shard.ShardRow, "check_unique", lambda self, phone, agent: None)
    result = shard(backend, shard_id="sage-02", phone_number="+15551230001")
    assert result.failed
    assert (
        result["msg"].startswith(("the SQLite database", "the PostgreSQL database"))
        and " refused a change: " in result["msg"]
    )
    assert "token" not in result
    assert table(backend) == before


def test_closed_postgresql_port_on_loopback_writes_nothing_to_sqlite_either(tmp_path):
    need_psycopg()
    # A closed port of this machine's loopback: refused at once, nothing waits.
    result = run_module(
        persona_shard.main,
        dict(NEW, dsn="postgresql://postgres@127.0.0.1:1/backend"),
        no_runner,
    )
    assert result.failed
    assert result["msg"].startswith(
        "cannot connect to the PostgreSQL database backend on 127.0.0.1:1 as postgres: "
    )
    assert "Traceback" not in result["msg"] and "token" not in result


def add_fleet(backend):
    """Four sage shards and one wren shard, in the states and loads the tests need."""
    rows = [
        ("sage-01", "+15551230001", "mini-01", "active", 40),
        ("sage-02", "+15551230002", "mini-02", "active", 12),
        ("sage-03", "+15551230003", "mini-02", "retiring", 0),
        ("sage-04", "+15551230004", "mini-01", "provisioning", 0),
        ("wren-01", "+15551230005", "mini-01", "active", 3),
    ]
    for shard_id, phone, host, state, users in rows:
        assert not shard(backend, shard_id=shard_id, phone_number=phone, host=host).failed
        if state != "provisioning":
            for step in ("active", state) if state != "active" else ("active",):
                shard(backend, shard_id=shard_id, state=step)
        backend.run(
            "UPDATE persona_shards SET active_users = %s WHERE shard_id = %s", users, shard_id
        )


def ids(result, key="shards"):
    return [row["shard_id"] for row in result[key]]


def test_info_filters_by_state_and_host_and_persona(backend):
    add_fleet(backend)
    assert ids(info(backend, state="active")) == ["sage-01", "sage-02", "wren-01"]
    assert ids(info(backend, state="provisioning")) == ["sage-04"]
    assert ids(info(backend, host="mini-02")) == ["sage-02", "sage-03"]
    assert ids(info(backend, persona="sage", host="mini-01")) == ["sage-01", "sage-04"]
    assert ids(info(backend, persona="sage", state="retiring", host="mini-02")) == ["sage-03"]
    none = info(backend, state="disabled")
    assert none["shards"] == [] and none["exists"] is False
    assert info(backend, state="paused")["msg"].startswith("value of state must be one of")


def test_assignment_is_the_active_shard_with_fewest_users(backend):
    add_fleet(backend)
    result = info(backend, persona="sage")
    assert result["assignment"]["shard_id"] == "sage-02"
    assert result["assignment"]["active_users"] == 12
    assert "token_hash" not in result["assignment"]
    assert result["queries"][-1].endswith(
        "WHERE persona = :persona AND state = 'active' ORDER BY active_users, shard_id LIMIT 1"
    )
    # Retiring and provisioning shards with no users are never chosen, whatever the filters.
    filtered = info(backend, persona="sage", host="mini-01", state="provisioning")
    assert ids(filtered) == ["sage-04"]
    assert filtered["assignment"]["shard_id"] == "sage-02"
    assert info(backend, persona="wren")["assignment"]["shard_id"] == "wren-01"


def test_assignment_tie_goes_to_the_lowest_shard_id(backend):
    add_fleet(backend)
    backend.run("UPDATE persona_shards SET active_users = 12 WHERE shard_id = 'sage-01'")
    assert info(backend, persona="sage")["assignment"]["shard_id"] == "sage-01"


def test_assignment_is_null_without_an_active_shard(backend):
    add_fleet(backend)
    for shard_id in ("sage-01", "sage-02"):
        shard(backend, shard_id=shard_id, state="retiring")
    result = info(backend, persona="sage")
    assert result["assignment"] is None
    assert ids(result) == ["sage-01", "sage-02", "sage-03", "sage-04"]
    unknown = info(backend, persona="nova")
    assert unknown["assignment"] is None and unknown["exists"] is False


def test_assignment_only_with_a_persona(backend):
    add_fleet(backend)
    assert "assignment" not in info(backend)
    assert "assignment" not in info(backend, host="mini-01")


def test_info_changes_nothing_in_check_mode_either(backend):
    add_fleet(backend)
    before = table(backend)
    args = {"dsn": backend.dsn, "persona": "sage"}
    result = run_module(persona_shard_info.main, args, no_runner, check_mode=True)
    assert result["changed"] is False and result["assignment"]["shard_id"] == "sage-02"
    assert table(backend) == before


def test_info_on_a_database_without_the_table_says_to_run_init_db(tmp_path):
    path = tmp_path / "empty.db"
    sqlite3.connect(path).close()
    result = run_module(persona_shard_info.main, {"dsn": f"sqlite://{path}"}, no_runner)
    assert result.failed
    assert result["msg"] == (
        f"table persona_shards not found in the SQLite database {path}: run "
        "`edge-backend init-db --dsn ...` first."
    )
