"""The send path: budgets, turns between chats, attachments staged where Messages reads."""

from __future__ import annotations

import base64
import sqlite3

import pytest
from edge_relay.config import ConfigError, parse
from edge_relay.ratelimit import SendLimits
from relay_support import RunningRelay, wait_for

pytestmark = pytest.mark.asyncio

HANDLE = "+15550001111"
CHAT = f"any;-;{HANDLE}"
OTHER = "+15550002222"


def send(command_id: str, *bubbles: str, **target) -> dict:
    command = {"id": command_id, "type": "send", "bubbles": list(bubbles)}
    command.update(target or {"chat_guid": CHAT})
    return command


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_every_budget_must_have_room_and_a_refusal_takes_nothing():
    clock = Clock()
    limits = SendLimits(3, 2, 1, clock)
    assert limits.try_acquire("chat-a", False)
    assert limits.try_acquire("chat-a", False)
    assert limits.blocked_by("chat-a", False) == "recipient"
    assert limits.try_acquire("+15550003333", True)
    assert limits.blocked_by("+15550004444", True) == "overall"
    clock.now += 60  # the minute windows empty; the first-contact hour does not
    assert limits.blocked_by("+15550004444", True) == "first_contact"
    assert limits.try_acquire("chat-b", False)
    clock.now += 3600
    assert limits.try_acquire("+15550004444", True)


async def test_one_busy_chat_does_not_hold_up_the_others(settings, backend, messages, osascript):
    messages.chat(HANDLE)
    messages.chat(OTHER)
    settings["rate_limit"]["per_recipient_per_minute"] = 2
    async with RunningRelay(settings) as relay:
        for n in range(5):
            backend.queue_command(send(f"a{n}", f"to a {n}"))
        backend.queue_command(send("b0", "to b", chat_guid=f"any;-;{OTHER}"))
        await wait_for(lambda: len(backend.results) >= 3, what="three sends")
        await wait_for(lambda: relay.queue.depth == 3, what="the rest to wait")
    targets = [call[2] for call in osascript.calls()]
    # Chats take turns, and within a chat the order is kept.
    assert targets == [CHAT, f"any;-;{OTHER}", CHAT]
    assert [call[4] for call in osascript.calls() if call[2] == CHAT] == ["to a 0", "to a 1"]
    assert set(backend.results) == {"a0", "a1", "b0"}


async def test_new_handles_use_the_first_contact_budget(settings, backend, messages, osascript):
    messages.chat(HANDLE)
    settings["rate_limit"]["first_contact_per_hour"] = 1
    async with RunningRelay(settings) as relay:
        backend.queue_command(send("new1", "hello", handle="+15550007001"))
        backend.queue_command(send("new2", "hello", handle="+15550007002"))
        backend.queue_command(send("known", "again", handle=HANDLE))
        await wait_for(lambda: {"new1"} <= set(backend.results), what="the first new handle")
        # HANDLE has a chat but was never written to: a first contact too, held back.
        await wait_for(lambda: relay.queue.depth == 2, what="the others to wait")
    assert backend.results["new1"]["status"] == "delivered"
    assert [c[2] for c in osascript.calls()] == ["+15550007001"]


async def test_a_handle_written_to_before_is_not_a_first_contact(
    settings, backend, messages, osascript
):
    messages.chat(HANDLE)
    settings["rate_limit"]["first_contact_per_hour"] = 1
    async with RunningRelay(settings):
        backend.queue_command(send("c1", "one", handle=HANDLE))
        await wait_for(lambda: "c1" in backend.results, what="the first send")
        backend.queue_command(send("c2", "two", handle=HANDLE))
        backend.queue_command(send("c3", "three", chat_guid=CHAT))
        await wait_for(lambda: {"c2", "c3"} <= set(backend.results), what="the later sends")
    assert {r["status"] for r in backend.results.values()} == {"delivered"}


async def test_attachments_are_staged_in_messages_reach_and_sent_as_files(
    settings, backend, messages, osascript, tmp_path
):
    messages.chat(HANDLE)
    local = tmp_path / "on-this-mac.pdf"
    local.write_bytes(b"%PDF-1.4 local")
    data = b"\x89PNG from the backend"
    command = send("c1", "look at these")
    command["attachments"] = [
        {"filename": "../../photo.png", "data_base64": base64.b64encode(data).decode()},
        {"path": str(local)},
    ]
    staging = tmp_path / "home" / "Library" / "Messages" / "Attachments-staging"
    settings["attachments_dir"] = str(staging)
    async with RunningRelay(settings):
        backend.queue_command(command)
        await wait_for(lambda: "c1" in backend.results, what="the result")
    assert backend.results["c1"]["status"] == "delivered", backend.results["c1"]
    [call] = osascript.calls()
    assert call[3:5] == ["text", "look at these"]
    assert call[5] == "file" and call[7] == "file"
    # Under ~/Library/Messages: a place Messages may read from; no folder from the name.
    assert call[6] == str(staging / "c1" / "1-photo.png")
    assert call[8].endswith("2-on-this-mac.pdf")
    assert [bytes.fromhex(content) for _, content in osascript.files()] == [
        data,
        b"%PDF-1.4 local",
    ]
    rows = messages.rows("SELECT text, cache_has_attachments FROM message WHERE is_from_me = 1")
    assert rows == [("look at these", 0), ("\ufffc", 1), ("\ufffc", 1)]
    assert not (staging / "c1").exists()  # removed once the send is settled
    # The queue kept the staged copies, never the data the backend sent.
    state = sqlite3.connect(str(tmp_path / "state" / "relay-state.db"))
    try:
        stored = " ".join(str(row) for row in state.execute("SELECT * FROM queue"))
    finally:
        state.close()
    assert base64.b64encode(data).decode() not in stored


@pytest.mark.parametrize(
    "attachment, reason",
    [
        ({"filename": "a.png", "data_base64": "not base64!"}, "not valid base64"),
        ({"data_base64": "aGk="}, "needs a filename"),
        ({"path": "relative/file.png"}, "absolute path"),
        ({"path": "/nonexistent/file.png"}, "cannot be read"),
        ({"path": "/etc/hostname", "data_base64": "aGk="}, "not both"),
    ],
)
async def test_a_bad_attachment_fails_the_command_and_queues_nothing(
    settings, backend, messages, osascript, attachment, reason
):
    messages.chat(HANDLE)
    command = send("c1", "hi")
    command["attachments"] = [attachment]
    async with RunningRelay(settings) as relay:
        backend.queue_command(command)
        await wait_for(lambda: "c1" in backend.results, what="the result")
        figures = relay.queue.figures()
    assert backend.results["c1"]["status"] == "failed"
    assert reason in backend.results["c1"]["detail"]
    assert figures["totalEnqueued"] == 0 and osascript.calls() == []


async def test_a_file_messages_cannot_reach_fails_though_osascript_succeeded(
    settings, backend, messages, osascript, tmp_path
):
    messages.chat(HANDLE)
    outside = tmp_path / "tmp-staging"
    settings["send_queue"]["retries"] = 0
    async with RunningRelay(settings) as relay:
        # What staging in /tmp would do: the config refuses it, so force it here.
        relay.stage.folder = str(outside)
        command = send("c1", "caption")
        command["attachments"] = [{"filename": "x.png", "data_base64": "aGk="}]
        backend.queue_command(command)
        await wait_for(lambda: "c1" in backend.results, what="the result")
    result = backend.results["c1"]
    assert result["status"] == "failed" and "bubble 2 failed" in result["detail"]


def test_attachments_dir_must_be_in_messages_reach(settings):
    for folder in ("/tmp/staging", "relative/Pictures/x", "/Pictures"):
        settings["attachments_dir"] = folder
        with pytest.raises(ConfigError, match="outside Messages' reach"):
            parse(settings)
    settings["attachments_dir"] = "/Users/edge_sage_01/Pictures/edge-relay"
    assert parse(settings).attachments_folder == "/Users/edge_sage_01/Pictures/edge-relay"


def test_the_default_staging_folder_is_beside_chat_db(settings, messages):
    config = parse(settings)
    assert config.attachments_folder == str(
        messages.path.parent / "Attachments-staging" / "edge-relay"
    )
