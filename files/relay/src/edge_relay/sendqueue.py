"""The SendQueue: send commands waiting for Messages, kept in the state database.

Bounded (a command arriving when it is full is dropped and counted), retried with back-off,
expired after `expiry_s` (or the command's own `expires_at` when sooner), and kept in order per
chat: a later command to a chat waits while an earlier one to the same chat is retrying.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any, Dict, List, Optional, Tuple

from edge_relay.config import SendQueueConfig
from edge_relay.state import StateStore


class CommandError(ValueError):
    """A send command the relay cannot act on (missing target or bubbles)."""


def command_target(command: Dict[str, Any]) -> Tuple[str, str]:
    """(mode, target) for osascript: ('chat', chat guid) or ('handle', handle)."""
    chat_guid = command.get("chat_guid")
    handle = command.get("handle")
    if isinstance(chat_guid, str) and chat_guid:
        return "chat", chat_guid
    if isinstance(handle, str) and handle:
        return "handle", handle
    raise CommandError("the command names neither a chat_guid nor a handle")


def _expires_at(command: Dict[str, Any]) -> Optional[float]:
    value = command.get("expires_at")
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class SendQueue:
    def __init__(self, settings: SendQueueConfig, store: StateStore):
        self.settings = settings
        self.store = store
        self.items: List[Dict[str, Any]] = store.load_queue()

    @property
    def depth(self) -> int:
        return len(self.items)

    def figures(self) -> Dict[str, int]:
        figures = self.store.figures()
        return {"depth": self.depth, **figures}

    def interrupted(self) -> List[Dict[str, Any]]:
        """Items whose send was under way when the relay stopped: their outcome is unknown."""
        return [item for item in self.items if item["in_flight"]]

    def enqueue(self, command: Dict[str, Any], now: Optional[float] = None) -> str:
        """Adds a send command; answers 'queued', 'known' (already seen) or 'dropped'."""
        now = time.time() if now is None else now
        command_id = str(command.get("id") or "")
        if not command_id:
            raise CommandError("the command has no id")
        bubbles = command.get("bubbles")
        if (
            not isinstance(bubbles, list)
            or not bubbles
            or not all(isinstance(b, str) for b in bubbles)
        ):
            raise CommandError("the command's bubbles must be a non-empty list of strings")
        command_target(command)
        if self.store.is_known(command_id):
            return "known"
        if self.depth >= self.settings.max_depth:
            self.store.record_drop(
                command_id,
                now,
                "failed",
                f"dropped: the send queue is full ({self.settings.max_depth} waiting)",
            )
            return "dropped"
        expires = now + self.settings.expiry_s
        own_expiry = _expires_at(command)
        if own_expiry is not None:
            expires = min(expires, own_expiry)
        item = {
            "command_id": command_id,
            "command": command,
            "bubbles": list(bubbles),
            "enqueued_at": now,
            "expires_at": expires,
            "attempts": 0,
            "next_attempt_at": now,
            "in_flight": False,
            "last_error": None,
        }
        self.store.enqueue(item, now)
        self.items.append(item)
        return "queued"

    def expired(self, now: float) -> List[Dict[str, Any]]:
        return [i for i in self.items if not i["in_flight"] and i["expires_at"] <= now]

    def next_due(self, now: float) -> Optional[Dict[str, Any]]:
        """The oldest item ready to send whose chat has no older item still waiting."""
        blocked = set()
        for item in self.items:
            target = command_target(item["command"])
            if target in blocked:
                continue
            blocked.add(target)
            if not item["in_flight"] and item["next_attempt_at"] <= now:
                return item
        return None

    def start_attempt(self, item: Dict[str, Any]) -> None:
        item["in_flight"] = True
        item["attempts"] += 1
        self.store.update_item(item)

    def retry_or_fail(self, item: Dict[str, Any], reason: str, now: float) -> bool:
        """After a failed attempt: schedules a retry (True) or, out of retries, False."""
        item["in_flight"] = False
        item["last_error"] = reason
        retries_done = item["attempts"] - 1
        if retries_done >= self.settings.retries:
            self.store.update_item(item)
            return False
        item["next_attempt_at"] = now + self.settings.backoff_s[retries_done]
        self.store.update_item(item)
        return True

    def set_remaining(self, item: Dict[str, Any], delivered: int) -> None:
        """Drops the bubbles Messages already sent, so a retry sends only the rest."""
        if delivered:
            item["bubbles"] = item["bubbles"][delivered:]
            self.store.update_item(item)

    def finish(self, item: Dict[str, Any], status: str, detail: str, now: float) -> None:
        self.store.finish(item["command_id"], status, detail, now)
        self.items.remove(item)
