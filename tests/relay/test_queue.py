"""Rate limiter window, SendQueue figures, drops, retries, expiry, and the health bounds."""

from __future__ import annotations

import pytest
from edge_relay.config import HealthConfig, SendQueueConfig
from edge_relay.health import QueueView, depth_high_for, judge_queue
from edge_relay.ratelimit import SlidingWindowLimiter
from edge_relay.sendqueue import CommandError, SendQueue
from edge_relay.state import StateStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_window_slides_rather_than_resetting_each_minute():
    clock = Clock()
    limiter = SlidingWindowLimiter(3, 60.0, clock)
    assert [limiter.try_acquire() for _ in range(4)] == [True, True, True, False]
    clock.now += 30
    assert not limiter.try_acquire()
    clock.now += 30  # the first three leave the window together
    assert [limiter.try_acquire() for _ in range(4)] == [True, True, True, False]


def test_a_slot_frees_exactly_when_its_send_leaves_the_window():
    clock = Clock()
    limiter = SlidingWindowLimiter(2, 60.0, clock)
    limiter.try_acquire()
    clock.now += 10
    limiter.try_acquire()
    clock.now += 50  # the first is now 60 s old
    assert limiter.try_acquire()
    assert not limiter.try_acquire()
    clock.now += 9.9
    assert not limiter.try_acquire()
    clock.now += 0.2
    assert limiter.try_acquire()


def command(n: int, chat: str = "any;-;+15550001111") -> dict:
    return {"id": f"cmd-{n}", "type": "send", "chat_guid": chat, "bubbles": [f"b{n}"]}


@pytest.fixture
def queue_factory(tmp_path):
    stores = []

    def make(**settings):
        store = StateStore(str(tmp_path / "state"))
        stores.append(store)
        return SendQueue(SendQueueConfig(**settings), store)

    yield make
    for store in stores:
        store.close()


def test_figures_count_and_drops_happen_only_when_full(queue_factory):
    queue = queue_factory(max_depth=2)
    assert queue.figures() == {
        "depth": 0,
        "totalEnqueued": 0,
        "totalDelivered": 0,
        "totalDropped": 0,
        "totalExpired": 0,
        "totalUncertain": 0,
    }
    assert queue.enqueue(command(1), 1.0) == "queued"
    assert queue.enqueue(command(2), 1.0) == "queued"
    assert queue.enqueue(command(3), 1.0) == "dropped"
    assert queue.enqueue(command(1), 1.0) == "known"  # handed out twice: sent once
    queue.finish(queue.items[0], "delivered", "ok", 2.0)
    assert queue.figures() == {
        "depth": 1,
        "totalEnqueued": 2,
        "totalDelivered": 1,
        "totalDropped": 1,
        "totalExpired": 0,
        "totalUncertain": 0,
    }
    # The dropped command is answered as failed, with the reason.
    results = dict((cid, (status, detail)) for cid, status, detail in queue.store.pending_results())
    assert results["cmd-3"][0] == "failed" and "queue is full" in results["cmd-3"][1]


def test_figures_and_items_survive_a_restart(queue_factory):
    queue = queue_factory()
    queue.enqueue(command(1), 1.0)
    queue.enqueue(command(2), 1.0)
    queue.finish(queue.items[0], "delivered", "ok", 2.0)
    queue.store.close()
    again = queue_factory()
    assert again.figures() == {
        "depth": 1,
        "totalEnqueued": 2,
        "totalDelivered": 1,
        "totalDropped": 0,
        "totalExpired": 0,
        "totalUncertain": 0,
    }
    assert again.items[0]["command_id"] == "cmd-2"


def test_retries_follow_the_backoff_then_give_up(queue_factory):
    queue = queue_factory(retries=3, backoff_s=(2.0, 4.0, 8.0))
    queue.enqueue(command(1), 0.0)
    item = queue.items[0]
    waits = []
    now = 0.0
    while True:
        assert queue.next_due(now) is item
        queue.start_attempt(item)
        if not queue.retry_or_fail(item, "boom", now):
            break
        waits.append(item["next_attempt_at"] - now)
        assert queue.next_due(now) is None
        now = item["next_attempt_at"]
    assert waits == [2.0, 4.0, 8.0]
    assert item["attempts"] == 4


def test_a_partial_send_retries_only_the_rest(queue_factory):
    queue = queue_factory()
    queue.enqueue({"id": "c", "type": "send", "handle": "+15550001111", "bubbles": ["a", "b"]}, 0)
    queue.set_remaining(queue.items[0], 1)
    assert queue.items[0]["bubbles"] == ["b"]


def test_expiry_uses_the_sooner_of_expiry_s_and_expires_at(queue_factory):
    queue = queue_factory(expiry_s=120)
    queue.enqueue(command(1), 0.0)
    soon = dict(command(2), expires_at="1970-01-01T00:00:30Z")
    queue.enqueue(soon, 0.0)
    assert [i["command_id"] for i in queue.expired(31.0)] == ["cmd-2"]
    assert [i["command_id"] for i in queue.expired(120.0)] == ["cmd-1", "cmd-2"]


def test_a_chat_keeps_its_order_while_an_earlier_send_waits(queue_factory):
    queue = queue_factory()
    queue.enqueue(command(1, "chat-a"), 0.0)
    queue.enqueue(command(2, "chat-a"), 0.0)
    queue.enqueue(command(3, "chat-b"), 0.0)
    first = queue.next_due(0.0)
    queue.start_attempt(first)
    queue.retry_or_fail(first, "boom", 0.0)
    assert queue.next_due(0.5)["command_id"] == "cmd-3"


@pytest.mark.parametrize(
    "bad, reason",
    [
        ({"type": "send", "chat_guid": "c", "bubbles": ["x"]}, "has no id"),
        ({"id": "1", "type": "send", "bubbles": ["x"]}, "neither a chat_guid nor a handle"),
        ({"id": "1", "type": "send", "chat_guid": "c", "bubbles": []}, "non-empty list"),
        ({"id": "1", "type": "send", "chat_guid": "c", "bubbles": [3]}, "non-empty list"),
    ],
)
def test_bad_commands_are_refused_and_change_nothing(queue_factory, bad, reason):
    queue = queue_factory()
    with pytest.raises(CommandError, match=reason):
        queue.enqueue(bad, 0.0)
    assert queue.figures()["totalEnqueued"] == 0 and queue.depth == 0


BOUNDS = HealthConfig()


@pytest.mark.parametrize(
    "depth, high_for, drops, expected",
    [
        (0, None, 0, "healthy"),
        (10, None, 0, "healthy"),
        (11, None, 0, "warning"),
        (50, None, 0, "warning"),
        (51, 30.0, 0, "warning"),  # above 50, but not yet for a minute
        (51, 60.0, 0, "critical"),
        (0, None, 1, "warning"),
        (0, None, 5, "warning"),
        (0, None, 6, "critical"),
    ],
)
def test_queue_status_follows_the_design_bounds(depth, high_for, drops, expected):
    now = 5000.0
    since = None if high_for is None else now - high_for
    assert judge_queue(QueueView(depth, since, drops), BOUNDS, now) == expected


@pytest.mark.parametrize(
    "depth, high_for, expected",
    [
        (50, None, None),  # at the bound, not above it
        (30, 90.0, None),  # back under the bound: a start not yet cleared does not count
        (51, None, 0.0),  # above since the queue loop last looked: no start yet
        (51, 30.0, 30.0),
        (400, 75.5, 75.5),
    ],
)
def test_depth_high_for_counts_only_while_above_the_critical_bound(depth, high_for, expected):
    now = 5000.0
    since = None if high_for is None else now - high_for
    assert depth_high_for(QueueView(depth, since, 0), BOUNDS, now) == expected


def test_a_depth_is_critical_at_once_when_the_bound_allows_no_time():
    at_once = HealthConfig(depth_critical_after_s=0)
    assert judge_queue(QueueView(51, None, 0), at_once, 5000.0) == "critical"
    assert judge_queue(QueueView(51, None, 0), BOUNDS, 5000.0) == "warning"
