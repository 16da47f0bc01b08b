"""The SendQueue: send commands waiting for Messages, kept in the state database.

Bounded (a command arriving when it is full is dropped and counted), retried with back-off,
expired after `expiry_s` (or the command's own `expires_at` when sooner), and kept in order per
chat: a later command to a chat waits while an earlier one to the same chat is retrying.
Chats take turns: the next send goes to the waiting chat served longest ago, so one busy chat
does not hold up the others.

An item's `parts` are what osascript sends, in order: text bubbles (strings), then staged
attachments ({"file": path}). A retry after a partial send sends only the parts left.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any, Dict, List, Optional, Tuple

from edge_relay.attachments import AttachmentError, AttachmentStage
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


def _valid_bubbles(command: Dict[str, Any]) -> List[str]:
    bubbles = command.get("bubbles", [])
    attachments = command.get("attachments") or []
    strings = isinstance(bubbles, list) and all(isinstance(b, str) for b in bubbles)
    if not strings or not (bubbles or attachments):
        raise CommandError(
            "the command's bubbles must be a non-empty list of strings "
            "(empty only when it carries attachments)"
        )
    return bubbles


class SendQueue:
    def __init__(
        self,
        settings: SendQueueConfig,
        store: StateStore,
        stage: Optional[AttachmentStage] = None,
    ):
        self.settings = settings
        self.store = store
        self.stage = stage
        self.items: List[Dict[str, Any]] = store.load_queue()
        # When each chat was last given a send (a serial number): the turn order of chats.
        self._served: Dict[Tuple[str, str], int] = {}
        self._serial = 0

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
        bubbles = _valid_bubbles(command)
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
        parts: List[Any] = list(bubbles)
        if command.get("attachments"):
            if self.stage is None:
                raise CommandError("this relay has no folder to stage attachments in")
            try:
                staged = self.stage.stage(command_id, command["attachments"])
            except AttachmentError as error:
                raise CommandError(str(error)) from None
            parts += [{"file": path} for path in staged]
            # The queue keeps the staged copies, not the data the backend sent.
            command = {key: value for key, value in command.items() if key != "attachments"}
        item = {
            "command_id": command_id,
            "command": command,
            "bubbles": parts,
            "enqueued_at": now,
            "expires_at": expires,
            "attempts": 0,
            "next_attempt_at": now,
            "in_flight": False,
            "last_error": None,
        }
        try:
            self.store.enqueue(item, now)
        except BaseException:
            self._discard_files(command_id)
            raise
        self.items.append(item)
        return "queued"

    def _discard_files(self, command_id: str) -> None:
        if self.stage is not None:
            self.stage.discard(command_id)

    def expired(self, now: float) -> List[Dict[str, Any]]:
        return [i for i in self.items if not i["in_flight"] and i["expires_at"] <= now]

    def due(self, now: float) -> List[Dict[str, Any]]:
        """Items ready to send, one per chat (its oldest), the chat served longest ago first."""
        heads = []
        seen = set()
        for item in self.items:
            target = command_target(item["command"])
            if target in seen:
                continue
            seen.add(target)
            if not item["in_flight"] and item["next_attempt_at"] <= now:
                heads.append(item)
        # sorted() is stable: among chats never served, the oldest command goes first.
        return sorted(heads, key=lambda i: self._served.get(command_target(i["command"]), 0))

    def next_due(self, now: float) -> Optional[Dict[str, Any]]:
        """The item whose turn it is, or None."""
        ready = self.due(now)
        return ready[0] if ready else None

    def start_attempt(self, item: Dict[str, Any]) -> None:
        self._serial += 1
        self._served[command_target(item["command"])] = self._serial
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
        target = command_target(item["command"])
        if not any(command_target(other["command"]) == target for other in self.items):
            self._served.pop(target, None)
        # Messages may still be reading the files of an uncertain send: those are pruned later.
        if status != "uncertain":
            self._discard_files(item["command_id"])
