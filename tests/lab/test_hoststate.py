"""The host state file every part of the lab shares."""

import json
import multiprocessing
import stat

import pytest
from edge_lab import hoststate


def test_a_new_host_reads_as_the_defaults(tmp_path):
    state = hoststate.load(tmp_path)
    assert state == hoststate.DEFAULT_STATE
    state["imessage"]["edge_sage_01"] = "+15551230001"
    assert hoststate.load(tmp_path)["imessage"] == {}


def test_update_stores_in_place_changes_and_returned_states(tmp_path):
    hoststate.update(tmp_path, lambda state: state["gui_sessions"].append(502))
    stored = hoststate.update(tmp_path, lambda state: {**state, "fda": True})
    assert stored["gui_sessions"] == [502] and stored["fda"] is True

    path = tmp_path / "private/var/db/edge-lab/state.json"
    assert json.loads(path.read_text())["gui_sessions"] == [502]
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert sorted(p.name for p in path.parent.iterdir()) == ["state.json", "state.json.lock"]


def test_a_failing_change_leaves_the_file_as_it_was(tmp_path):
    hoststate.update(tmp_path, lambda state: {**state, "clt": False})
    before = hoststate.state_path(tmp_path).read_bytes()

    def broken(state):
        state["clt"] = True
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError):
        hoststate.update(tmp_path, broken)
    assert hoststate.state_path(tmp_path).read_bytes() == before


def _add_session(root, uid):
    hoststate.update(root, lambda state: state["gui_sessions"].append(uid))


def test_concurrent_writers_lose_no_change(tmp_path):
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_add_session, args=(tmp_path, uid)) for uid in range(20)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=20)
    assert sorted(hoststate.load(tmp_path)["gui_sessions"]) == list(range(20))
