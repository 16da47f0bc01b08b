"""The admin side of the contract: sticky assignment, canary checks, the shard list."""

import asyncio

import pytest

pytestmark = pytest.mark.asyncio

USER = "+15550101001"
OTHER_USER = "+15550101002"
CANARY = "+15550009999"


async def assign(backend, persona: str, handle: str) -> tuple[int, dict]:
    return await backend.admin("POST", f"/admin/personas/{persona}/assign", {"handle": handle})


async def test_new_user_goes_to_the_active_shard_with_fewest_users(backend, shards):
    shards.add("sage-01", active_users=5)
    shards.add("sage-02", active_users=2)
    shards.add("sage-03", state="retiring", active_users=0)
    shards.add("sage-04", state="provisioning", active_users=0)
    shards.add("nova-01", active_users=0)

    status, body = await assign(backend, "sage", USER)
    assert (status, body) == (200, {"shard_id": "sage-02"})
    assert shards.row("sage-02")["active_users"] == 3
    (row,) = shards.query("SELECT persona, handle, shard_id FROM user_assignments")
    assert row == {"persona": "sage", "handle": USER, "shard_id": "sage-02"}


async def test_ties_go_to_the_lowest_shard_id(backend, shards):
    shards.add("sage-02", active_users=1)
    shards.add("sage-01", active_users=1)
    assert (await assign(backend, "sage", USER))[1] == {"shard_id": "sage-01"}
    assert (await assign(backend, "sage", OTHER_USER))[1] == {"shard_id": "sage-02"}


async def test_assignment_is_sticky(backend, shards):
    shards.add("sage-01")
    shards.add("sage-02", active_users=10)
    assert (await assign(backend, "sage", USER))[1]["shard_id"] == "sage-01"
    shards.set_state("sage-01", "retiring")
    assert (await assign(backend, "sage", USER))[1]["shard_id"] == "sage-01"
    assert shards.row("sage-01")["active_users"] == 1


async def test_no_active_shard_is_409_and_assigns_nobody(backend, shards):
    shards.add("sage-01", state="retiring")
    shards.add("sage-02", state="provisioning")
    for persona in ("sage", "nova"):
        status, body = await assign(backend, persona, USER)
        assert status == 409
        assert persona in body["error"] and "no active shard" in body["error"]
    assert shards.query("SELECT handle FROM user_assignments") == []


@pytest.mark.parametrize(
    ("persona", "handle", "word"),
    [("Sage", USER, "persona"), ("sage", "5550100", "handle"), ("sage", None, "handle")],
)
async def test_bad_assign_input_is_400(backend, shards, persona, handle, word):
    shards.add("sage-01")
    status, body = await backend.admin(
        "POST", f"/admin/personas/{persona}/assign", {"handle": handle}, conforming=False
    )
    assert status == 400
    assert word in body["error"]
    assert shards.row("sage-01")["active_users"] == 0


async def test_a_new_handle_writing_to_a_shard_is_assigned_to_it(backend, shards, message_event):
    token = shards.add("sage-02", active_users=7)
    shards.add("sage-01", active_users=0)
    await backend.inbound(token, [message_event("g1", handle=USER)])
    await backend.inbound(token, [message_event("g2", handle=USER)])
    assert shards.row("sage-02")["active_users"] == 8
    assert (await assign(backend, "sage", USER))[1] == {"shard_id": "sage-02"}


async def test_a_retiring_shard_answers_but_takes_no_new_user(backend, shards, message_event):
    token = shards.add("sage-01", state="retiring")
    await backend.inbound(token, [message_event("g1", "hi", handle=USER)])
    assert [c["bubbles"] for c in await backend.poll(token)] == [["echo: hi"]]
    assert shards.row("sage-01")["active_users"] == 0
    assert shards.query("SELECT handle FROM user_assignments") == []


async def test_canary_round_trip(backend, shards, message_event):
    token = shards.add("sage-01", state="provisioning")
    status, body = await backend.admin("POST", "/admin/shards/sage-01/canary", {"handle": CANARY})
    assert status == 202 and body["status"] == "pending"
    check_id = body["check_id"]

    (command,) = await backend.poll(token)
    assert command["handle"] == CANARY and "chat_guid" not in command
    assert command["bubbles"] == [f"canary {check_id}"]

    status, body = await backend.admin("GET", f"/admin/canary/{check_id}")
    assert (status, body["status"], body["round_trip_ms"]) == (200, "pending", None)

    # The shard's own copy of the canary text must not count as the answer.
    await backend.inbound(
        token, [message_event("out1", f"canary {check_id}", handle=CANARY, is_from_me=True)]
    )
    assert (await backend.admin("GET", f"/admin/canary/{check_id}"))[1]["status"] == "pending"

    await asyncio.sleep(0.05)
    await backend.inbound(token, [message_event("in1", f"ack canary {check_id}", handle=CANARY)])
    status, body = await backend.admin("GET", f"/admin/canary/{check_id}")
    assert body == {
        "check_id": check_id,
        "shard_id": "sage-01",
        "status": "ok",
        "round_trip_ms": body["round_trip_ms"],
    }
    assert 50 <= body["round_trip_ms"] < 5000

    # A canary answer is not a user: no echo, no assignment.
    assert await backend.poll(token) == []
    assert shards.row("sage-01")["active_users"] == 0


async def test_canary_answer_must_come_from_the_handle_through_the_shard(
    backend, shards, message_event
):
    token = shards.add("sage-01")
    other = shards.add("sage-02")
    _, body = await backend.admin("POST", "/admin/shards/sage-01/canary", {"handle": CANARY})
    check_id = body["check_id"]
    await backend.poll(token)

    await backend.inbound(token, [message_event("a", f"ack canary {check_id}", handle=USER)])
    await backend.inbound(other, [message_event("b", f"ack canary {check_id}", handle=CANARY)])
    assert (await backend.admin("GET", f"/admin/canary/{check_id}"))[1]["status"] == "pending"
    assert len(await backend.poll(token)) == 1  # the stranger got an ordinary echo


async def test_pending_canary_times_out_and_stays_so(start_backend, shards, message_event):
    backend = await start_backend(canary_timeout_s=0.3)
    token = shards.add("sage-01")
    _, body = await backend.admin("POST", "/admin/shards/sage-01/canary", {"handle": CANARY})
    check_id = body["check_id"]
    await asyncio.sleep(0.4)

    # Nobody polled in time: the canary send itself expired with the check.
    assert await backend.poll(token) == []
    status, body = await backend.admin("GET", f"/admin/canary/{check_id}")
    assert (status, body["status"], body["round_trip_ms"]) == (200, "timeout", None)

    await backend.inbound(token, [message_event("late", f"ack canary {check_id}", handle=CANARY)])
    assert (await backend.admin("GET", f"/admin/canary/{check_id}"))[1]["status"] == "timeout"
    assert await backend.poll(token) == []


async def test_canary_refusals(backend, shards):
    shards.add("sage-01", state="disabled")
    status, body = await backend.admin("POST", "/admin/shards/sage-09/canary", {"handle": CANARY})
    assert status == 404 and "sage-09" in body["error"]
    status, body = await backend.admin("POST", "/admin/shards/sage-01/canary", {"handle": CANARY})
    assert status == 409 and "disabled" in body["error"]
    status, body = await backend.admin(
        "POST", "/admin/shards/sage-01/canary", {"handle": "nobody"}, conforming=False
    )
    assert status == 400 and "handle" in body["error"]
    status, body = await backend.admin("GET", "/admin/canary/canary_nosuch")
    assert status == 404 and "canary_nosuch" in body["error"]
    assert shards.query("SELECT id FROM canary_checks") == []
    assert shards.query("SELECT id FROM edge_commands") == []


async def test_shard_list_shows_rows_without_token_hashes(backend, shards):
    token = shards.add("sage-02", state="retiring", active_users=4)
    shards.add("sage-01")
    await backend.call(
        "POST", "/edge/register", token, {"agent_id": "sage-02", "version": "2.0.0", "host": "m"}
    )
    status, body = await backend.admin("GET", "/admin/shards")
    assert status == 200
    assert [row["shard_id"] for row in body["shards"]] == ["sage-01", "sage-02"]
    second = body["shards"][1]
    assert (second["state"], second["active_users"], second["relay_version"]) == (
        "retiring",
        4,
        "2.0.0",
    )
    assert "token_hash" not in second
    assert shards.row("sage-02")["token_hash"] not in str(body)


async def test_admin_calls_need_the_admin_token(backend, shards):
    shards.add("sage-01")
    calls = [
        ("GET", "/admin/shards", None),
        ("POST", "/admin/shards/sage-01/canary", {"handle": CANARY}),
        ("GET", "/admin/canary/canary_x", None),
        ("POST", "/admin/personas/sage/assign", {"handle": USER}),
    ]
    for method, path, body in calls:
        for token in (None, "wrong"):
            status, answer = await backend.call(method, path, token, body)
            assert status == 401, (path, answer)
    assert shards.query("SELECT id FROM canary_checks") == []
    assert shards.row("sage-01")["active_users"] == 0
