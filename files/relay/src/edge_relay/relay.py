"""The relay process: inbound forwarding, the send path, registration, health and drain."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from datetime import datetime, timezone
from typing import Any, Dict, List, Optional

from edge_relay import __version__, parked
from edge_relay.attachments import AttachmentStage
from edge_relay.backend import Backend, BackendError
from edge_relay.chatdb import ChatDB
from edge_relay.config import Config
from edge_relay.health import (
    GuiSession,
    HealthServer,
    QueueView,
    backend_refused_check,
    depth_high_for,
    inbound_check,
    judge_queue,
    overall,
)
from edge_relay.inbound import Inbound
from edge_relay.ratelimit import SendLimits
from edge_relay.sender import Sender
from edge_relay.sendqueue import CommandError, SendQueue, command_target
from edge_relay.state import StateStore
from edge_relay.watcher import FolderWatcher

log = logging.getLogger("edge_relay")

LONG_POLL_WAIT_S = 25
DEFAULT_HEARTBEAT_S = 30.0
DRAIN_BOUND_S = 10.0
# `run` exits with this when its health port is taken: the one start that cannot serve.
EXIT_HEALTH_PORT = 3
WORKER_STOP_S = 3.0
BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 30.0
# AppleScript errors that mean this shard cannot send at all until a person acts.
BLOCKING_SEND_ERRORS = ("(error -1743)", "(error -600)", "(error -1719)")


def iso(moment: float) -> str:
    """A Unix time as /health gives times: UTC, to the second, with a Z."""
    return datetime.fromtimestamp(moment, timezone.utc).isoformat(timespec="seconds")[:-6] + "Z"


class Backoff:
    """Doubling waits while the backend is down, reset by the first success."""

    def __init__(self) -> None:
        self.next_s = BACKOFF_FIRST_S

    def reset(self) -> None:
        self.next_s = BACKOFF_FIRST_S

    def take(self) -> float:
        wait = self.next_s
        self.next_s = min(self.next_s * 2, BACKOFF_MAX_S)
        return wait


class Relay:
    def __init__(self, config: Config):
        self.config = config
        self.chat_db = ChatDB(config.chat_db)
        # /health answers from the event loop: it must not wait long on a busy database.
        self.health_chat_db = ChatDB(config.chat_db, busy_timeout_s=0.5)
        self.store = StateStore(config.state_dir)
        self.stage = AttachmentStage(config.attachments_folder)
        self.queue = SendQueue(config.send_queue, self.store, self.stage)
        self.limits = SendLimits(
            config.rate_limit.per_minute,
            config.rate_limit.per_recipient_per_minute,
            config.rate_limit.first_contact_per_hour,
        )
        self.sender = Sender(config.osascript, self.chat_db, config.send_queue.confirm_s)
        self.backend = Backend(config.backend_url, config.read_token(), config.backend_timeout_s)
        self.inbound = Inbound(
            self.chat_db, self.backend, self.store, config.poll_interval_s, self.take_commands
        )
        self.watcher = FolderWatcher(config.chat_db, self.wake_inbound)
        # The relay runs inside its user's GUI session: that is the session it checks.
        self.gui = GuiSession(config.launchctl, os.getuid())
        self.health = HealthServer(
            config.health.host, config.health.port, self.report, self.gui.refresh
        )
        self.registered = False
        self.registration_detail = "not registered yet"
        self.heartbeat_s = DEFAULT_HEARTBEAT_S
        self.send_problem: Optional[str] = None
        self.depth_high_since: Optional[float] = None
        self.draining = False
        self._stop: Optional[asyncio.Event] = None
        self._results_wake: Optional[asyncio.Event] = None
        self._registered_event: Optional[asyncio.Event] = None

    # The interface a folder watcher uses: new rows may be in chat.db, read now.

    def wake_inbound(self) -> None:
        self.inbound.wake()

    def request_drain(self) -> None:
        if self._stop is not None and not self._stop.is_set():
            log.info("drain requested: taking no new commands")
            self._stop.set()

    # Health

    def report(self) -> Dict[str, Any]:
        now = time.time()
        chat_ok, chat_detail = self.health_chat_db.check()
        window_s = self.config.health.drops_window_s
        since = now - window_s
        drops = self.store.recent_drops(since)
        arrivals = self.store.recent_arrivals(since)
        figures = self.queue.figures()
        view = QueueView(figures["depth"], self.depth_high_since, drops, arrivals)
        queue_status = judge_queue(view, self.config.health, now)
        high_for = depth_high_for(view, self.config.health, now)
        parked_now, oldest_parked = parked.summary(self.store.conn)
        undrained, undrained_found_at = self.store.undrained_stops()
        checks = {
            "chat_db": {"ok": chat_ok, "detail": chat_detail},
            "backend": {
                "ok": self.backend.reachable and self.inbound.problem is None,
                "detail": self.inbound.problem or self.backend.last_error or "reachable",
            },
            "registered": {"ok": self.registered, "detail": self.registration_detail},
            "messages": {
                "ok": self.send_problem is None,
                "detail": self.send_problem or "no send blocked",
            },
            "gui_session": self.gui.check(),
            "inbound": inbound_check(self.config.chat_db, self.config.health, now),
            "backend_refused": backend_refused_check(parked_now, oldest_parked),
        }
        return {
            "status": overall(checks, queue_status),
            "version": __version__,
            "shard_id": self.config.shard_id,
            # The relay's own process, for a deploy to compare with the pid launchd reports.
            "pid": os.getpid(),
            # Runs of this shard's relay that stopped without draining, found at the next start.
            "undrained_stops": {
                "total": undrained,
                "last_found_at": None if undrained_found_at is None else iso(undrained_found_at),
            },
            "send_queue": figures,
            "inbound": {
                "parked": parked_now,
                "totalParked": parked.total(self.store.conn),
                "chatDbReads": self.chat_db.reads,
            },
            "checks": checks,
            "queue_status": queue_status,
            # The figures the queue status was judged on, so that a gate judges them alike.
            "drops_recent": drops,
            "arrivals_recent": arrivals,
            "window_s": window_s,
            "depth_high_for_s": None if high_for is None else round(high_for, 3),
        }

    # Lifecycle

    async def run(self) -> int:
        self._stop = asyncio.Event()
        self._results_wake = asyncio.Event()
        self._registered_event = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.request_drain)

        await self.backend.start()
        try:
            await self.health.start()
        except OSError as error:
            # Nothing was taken yet: stop before the run is marked begun, so this start does
            # not count as an undrained stop (launchd starts the relay again after a pause).
            log.error(
                "cannot serve /health on %s:%d (%s): another process holds the port; give "
                "this shard another health.port (the relay role keeps the ports of a Mac in "
                "health-ports.json)",
                self.config.health.host,
                self.config.health.port,
                error.strerror or error,
            )
            await self._close_connections()
            self.store.close()
            return EXIT_HEALTH_PORT
        if self.store.begin_run(time.time()):
            log.warning(
                "the last run of this relay stopped without draining (killed, crashed or the "
                "Mac lost power); counted in /health as undrained_stops"
            )
        log.info(
            "relay %s started for shard %s (health on %s:%d)",
            __version__,
            self.config.shard_id,
            self.config.health.host,
            self.config.health.port,
        )
        self._settle_interrupted()

        workers = [
            asyncio.ensure_future(self._register_and_heartbeat()),
            asyncio.ensure_future(self._inbound_loop()),
            asyncio.ensure_future(self.watcher.run()),
            asyncio.ensure_future(self._commands_loop()),
            asyncio.ensure_future(self._results_loop()),
        ]
        sending = asyncio.ensure_future(self._queue_loop())
        await self._stop.wait()
        await self._drain(workers, sending)
        return 0

    def _settle_interrupted(self) -> None:
        """A send under way when the relay last stopped may have gone out: report, not retry."""
        for item in self.queue.interrupted():
            self.queue.finish(
                item,
                "uncertain",
                "the relay stopped during this send; Messages may have sent it",
                time.time(),
            )
            log.warning("send uncertain: command %s was interrupted by a stop", item["command_id"])

    async def _drain(self, workers: List[asyncio.Future], sending: asyncio.Future) -> None:
        self.draining = True
        await self._stop_workers(workers)

        # The queue loop stops at its next tick; a send under way gets the bound to finish.
        try:
            await asyncio.wait_for(sending, DRAIN_BOUND_S)
        except asyncio.TimeoutError:
            log.warning(
                "drain: a send did not finish within %g s; it will be reported "
                "uncertain at the next start",
                DRAIN_BOUND_S,
            )
        try:
            await asyncio.wait_for(self._flush_results(), 2.0)
        except (asyncio.TimeoutError, BackendError):
            log.info("drain: results not yet reported are kept for the next start")

        await self._close_connections()
        log.info(
            "drained: %d command(s) kept in the send queue for the next start", self.queue.depth
        )
        self.store.end_run()
        self.store.close()

    async def _close_connections(self) -> None:
        await self.health.stop()
        await self.backend.close()
        self.chat_db.close()

    @staticmethod
    async def _stop_workers(workers: List[asyncio.Future]) -> None:
        """Cancels the workers, again while any is still running, within WORKER_STOP_S.

        Python 3.9's asyncio.wait_for can swallow a cancellation that arrives as its inner
        future completes; cancelling once and waiting without a bound could then hang a drain.
        """
        deadline = time.monotonic() + WORKER_STOP_S
        pending = set(workers)
        while pending and time.monotonic() < deadline:
            for task in pending:
                task.cancel()
            pending = (await asyncio.wait(pending, timeout=0.5))[1]
        if pending:
            log.warning("drain: %d task(s) did not stop within %g s", len(pending), WORKER_STOP_S)

    @staticmethod
    async def _sleep(seconds: float, wake: asyncio.Event) -> None:
        """Waits `seconds`, or less when `wake` is set."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(wake.wait(), seconds)
        wake.clear()

    # Registration and heartbeat

    async def _register_and_heartbeat(self) -> None:
        backoff = Backoff()
        host = self.config.host or socket.gethostname()
        while not self.registered:
            try:
                answer = await self.backend.register(self.config.shard_id, __version__, host)
            except BackendError as error:
                self.registration_detail = f"registration failed: {error}"
                wait = backoff.take()
                log.warning("registration failed (%s); retrying in %g s", error, wait)
                await asyncio.sleep(wait)
                continue
            interval = answer.get("heartbeat_interval_s")
            if isinstance(interval, (int, float)) and interval > 0:
                self.heartbeat_s = float(interval)
            self.registered = True
            self._note_state(answer.get("state"))
            self._registered_event.set()
            log.info(
                "registered as %s (state %s, heartbeat every %g s)",
                self.config.shard_id,
                answer.get("state"),
                self.heartbeat_s,
            )

        while True:
            await asyncio.sleep(self.heartbeat_s)
            report = self.report()
            body = {
                "agent_id": self.config.shard_id,
                "version": __version__,
                "status": report["status"],
                "send_queue": report["send_queue"],
            }
            try:
                answer = await self.backend.heartbeat(body)
            except BackendError as error:
                log.warning("heartbeat failed (%s)", error)
                continue
            # The state changes after registration (provisioning, then active once the canary
            # answered); a backend that does not say it leaves the last known one.
            state = answer.get("state") if isinstance(answer, dict) else None
            if isinstance(state, str) and state:
                self._note_state(state)

    def _note_state(self, state: Optional[str]) -> None:
        self.registration_detail = f"registered, shard state {state}"

    # Inbound

    async def _inbound_loop(self) -> None:
        await self._registered_event.wait()
        await self.inbound.run()

    # Outbound

    def take_commands(self, commands: List[Any]) -> None:
        """Puts send commands into the SendQueue; anything else is answered as failed."""
        now = time.time()
        for command in commands:
            if not isinstance(command, dict) or not command.get("id"):
                log.warning("ignored a command without an id")
                continue
            command_id = str(command["id"])
            if self.draining:
                return
            if command.get("type") != "send":
                self.store.finish(command_id, "failed", "unknown command type", now)
                log.warning("command %s failed: unknown type", command_id)
                continue
            try:
                outcome = self.queue.enqueue(command, now)
            except CommandError as error:
                if not self.store.is_known(command_id):
                    self.store.finish(command_id, "failed", f"bad command: {error}", now)
                log.warning("command %s failed: %s", command_id, error)
                continue
            if outcome == "queued":
                log.info("command %s queued (depth %d)", command_id, self.queue.depth)
            elif outcome == "dropped":
                log.warning("command %s dropped: the send queue is full", command_id)
        if self._results_wake is not None:
            self._results_wake.set()

    async def _commands_loop(self) -> None:
        await self._registered_event.wait()
        backoff = Backoff()
        while True:
            try:
                commands = await self.backend.commands(LONG_POLL_WAIT_S)
            except BackendError as error:
                wait = backoff.take()
                log.warning("command poll failed (%s); retrying in %g s", error, wait)
                await asyncio.sleep(wait)
                continue
            backoff.reset()
            self.take_commands(commands)

    async def _queue_loop(self) -> None:
        tick_s = self.config.send_queue.tick_ms / 1000.0
        while not self.draining:
            now = time.time()
            for item in self.queue.expired(now):
                self.queue.finish(
                    item,
                    "expired",
                    f"not sent before it expired ({item['attempts']} attempt(s))",
                    now,
                )
                log.warning("send expired: command %s", item["command_id"])
                self._results_wake.set()

            sent = False
            for item in self.queue.due(now):
                mode, target = command_target(item["command"])
                first_contact = await self.sender.first_contact(mode, target)
                if self.limits.try_acquire(target, first_contact):
                    await self._send(item)
                    sent = True
                    break

            if self.queue.depth > self.config.health.depth_critical:
                self.depth_high_since = self.depth_high_since or now
            else:
                self.depth_high_since = None
            # While sends are due and allowed, the next one goes at once; the tick paces the
            # idle queue, not the sending.
            if not sent:
                await asyncio.sleep(tick_s)

    async def _send(self, item: Dict[str, Any]) -> None:
        command_id = item["command_id"]
        mode, target = command_target(item["command"])
        self.queue.start_attempt(item)
        outcome = await self.sender.send(mode, target, item["bubbles"])
        now = time.time()
        if outcome.status == "delivered":
            self.send_problem = None
            self.queue.finish(item, "delivered", outcome.detail, now)
            log.info("send delivered: command %s, guids %s", command_id, ",".join(outcome.guids))
        elif outcome.status == "uncertain":
            self.queue.finish(item, "uncertain", outcome.detail, now)
            log.warning("send uncertain: command %s (%s)", command_id, outcome.detail)
        else:
            blocking = outcome.detail.endswith(BLOCKING_SEND_ERRORS)
            self.send_problem = outcome.detail if blocking else None
            self.queue.set_remaining(item, outcome.delivered_bubbles)
            if self.queue.retry_or_fail(item, outcome.detail, now):
                log.warning(
                    "send failed: command %s, attempt %d (%s); will retry",
                    command_id,
                    item["attempts"],
                    outcome.detail,
                )
                return
            self.queue.finish(item, "failed", outcome.detail, now)
            log.warning("send failed: command %s (%s); no retries left", command_id, outcome.detail)
        self._results_wake.set()

    # Results

    async def _flush_results(self) -> None:
        for command_id, status, detail in self.store.pending_results():
            try:
                await self.backend.result(command_id, status, detail)
            except BackendError as error:
                # A result the backend can never take (unknown command, another result
                # already recorded, malformed) is not retried forever.
                if error.status in (400, 404, 409):
                    log.warning("result of command %s refused (%s); dropped", command_id, error)
                    self.store.result_reported(command_id)
                    continue
                raise
            self.store.result_reported(command_id)

    async def _results_loop(self) -> None:
        backoff = Backoff()
        while True:
            try:
                await self._flush_results()
                backoff.reset()
                await self._sleep(5.0, self._results_wake)
            except BackendError as error:
                wait = backoff.take()
                log.warning("reporting results failed (%s); retrying in %g s", error, wait)
                await asyncio.sleep(wait)
