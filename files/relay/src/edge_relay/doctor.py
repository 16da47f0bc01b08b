"""`edge-relay doctor`: everything a shard needs, checked one by one, each with what to fix.

It runs as the shard's user (as launchd would run the relay) and changes nothing the relay
keeps: the backend call is a registration, which the relay repeats at every start anyway.
Inbound events the backend would not take (parked) are reported as a warning: the shard works,
but a person should look at them and retry them once the backend takes them.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import socket
import urllib.error
import urllib.request
from typing import Callable, List, Optional, Tuple

from edge_relay import __version__, parked
from edge_relay.chatdb import ChatDB
from edge_relay.config import Config, ConfigError, load
from edge_relay.health import gui_session
from edge_relay.sender import SCRIPT_PATH

# name, ok (None: works, but look), sentence (what is wrong and what to do)
Check = Tuple[str, Optional[bool], str]
MARKS = {True: "ok  ", False: "FAIL", None: "warn"}


def check_chat_db(config: Config) -> Check:
    ok, detail = ChatDB(config.chat_db, busy_timeout_s=1.0).check()
    return "chat.db", ok, detail


def check_gui(config: Config) -> Check:
    # The session that matters is the shard user's, who owns the token file: run by anyone
    # else (root over SSH, say), doctor would judge the wrong user's session.
    owner = os.stat(config.token_file).st_uid
    if os.getuid() != owner:
        try:
            name = pwd.getpwuid(owner).pw_name
        except KeyError:
            name = str(owner)
        return (
            "GUI session",
            False,
            f"doctor runs as uid {os.getuid()}, not as the shard's user {name}: run it as that "
            f"user, as launchd runs the relay (sudo -u {name} edge-relay doctor --config ...)",
        )
    ok, detail = asyncio.run(gui_session(config.launchctl, owner))
    return "GUI session", ok, detail


def check_osascript(config: Config) -> Check:
    if not (os.path.isfile(config.osascript) and os.access(config.osascript, os.X_OK)):
        return "osascript", False, f"{config.osascript} is not executable; set osascript"
    if not os.path.isfile(SCRIPT_PATH):
        return "osascript", False, f"the Messages script {SCRIPT_PATH} is missing; reinstall"
    return "osascript", True, f"{config.osascript} and the Messages script are present"


def check_backend(config: Config) -> Check:
    body = json.dumps(
        {"agent_id": config.shard_id, "version": __version__, "host": config.host}
    ).encode()
    request = urllib.request.Request(
        config.backend_url + "/edge/register",
        data=body,
        method="POST",
        headers={
            "Authorization": f"Bearer {config.read_token()}",
            "Content-Type": "application/json",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=config.backend_timeout_s) as response:
            answer = json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as error:
        fixes = {
            401: "the backend does not know this token: write the shard's token to token_file",
            403: "the backend has disabled this shard: ask for it to be enabled",
        }
        reason = fixes.get(error.code, "the backend refused the registration")
        return "backend", False, f"{config.backend_url} answered {error.code}: {reason}"
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        return "backend", False, f"cannot reach {config.backend_url} ({reason}); check backend.url"
    state = answer.get("state") if isinstance(answer, dict) else None
    return "backend", True, f"{config.backend_url} knows shard {config.shard_id} (state {state})"


def check_health_port(config: Config) -> Check:
    host, port = config.health.host, config.health.port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
            return "health port", True, f"{host}:{port} is free for the relay"
        except OSError:
            pass
    try:
        url = f"http://{host}:{port}/health"
        with urllib.request.urlopen(url, timeout=2) as response:
            answer = json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as error:  # 503: a critical relay still answers
        answer = json.loads(error.read().decode("utf-8") or "{}")
    except (urllib.error.URLError, OSError, ValueError):
        answer = {}
    if isinstance(answer, dict) and answer.get("shard_id") == config.shard_id:
        return running_relay(answer, f"{host}:{port}")
    return (
        "health port",
        False,
        f"{host}:{port} is in use by another program; free it or choose another health.port",
    )


def running_relay(report: dict, where: str) -> Check:
    """The running relay's own judgement: some checks (Automation, the backend's answers) only
    the relay can make, from what its sends and calls met."""
    status = report.get("status")
    checks = report.get("checks") if isinstance(report.get("checks"), dict) else {}
    failing = [
        f"{name}: {check.get('detail', 'failed')}"
        for name, check in sorted(checks.items())
        if isinstance(check, dict) and check.get("ok") is False
    ]
    if status == "healthy":
        return "running relay", True, f"this shard's relay holds {where} and is healthy"
    detail = f"this shard's relay on {where} says {status}" + (
        ": " + "; ".join(failing) if failing else ""
    )
    return "running relay", None if status == "warning" else False, detail


def check_parked(config: Config, config_path: str) -> Check:
    command = f"edge-relay parked --config {config_path}"
    try:
        conn = parked.open_state(config.state_dir, writable=False)
    except parked.ParkedError as error:
        return "parked events", False, str(error)
    if conn is None:
        return "parked events", True, "none (the relay has kept no state yet)"
    try:
        count, oldest = parked.summary(conn)
    finally:
        conn.close()
    if not count:
        return "parked events", True, "none: the backend took every event the relay forwarded"
    return (
        "parked events",
        None,
        f"{count} inbound event(s) the backend would not take are parked (oldest {oldest}): "
        f"`{command}` lists them with the backend's reasons; once the backend takes them, "
        f"`{command} --retry` forwards them again",
    )


CHECKS: List[Callable[[Config], Check]] = [
    check_chat_db,
    check_gui,
    check_osascript,
    check_backend,
    check_health_port,
]


def run(config_path: str, out: Optional[Callable[[str], None]] = None) -> int:
    """Prints one line per check; 0 when none failed (warnings pass), 1 otherwise."""
    out = out or print
    try:
        config = load(config_path)
    except ConfigError as error:
        for problem in error.problems:
            out(f"FAIL  config: {problem}")
        out("FAIL  the other checks need a usable configuration; fix it and run doctor again")
        return 1
    out(f"ok    config: {config_path} is usable for shard {config.shard_id}")
    out(f"ok    token file: {config.token_file} is the owner's only, and not empty")
    failed = 0
    for check in [*CHECKS, lambda config: check_parked(config, config_path)]:
        name, ok, detail = check(config)
        failed += ok is False
        out(f"{MARKS[ok]}  {name}: {detail}")
    return 1 if failed else 0
