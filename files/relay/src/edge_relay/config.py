"""The relay's configuration: one YAML file, checked field by field.

Every problem is collected (not just the first) so that `check-config` can list them all,
each as a sentence naming the field and saying what to do.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import urlsplit

import yaml

PERSONA_RE = re.compile(r"^[a-z][a-z0-9]{1,19}$")
SHARD_RE = re.compile(r"^([a-z][a-z0-9]{1,19})-([0-9]{2})$")
E164_RE = re.compile(r"^\+[1-9][0-9]{7,14}$")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class ConfigError(Exception):
    """The configuration cannot be used; `problems` holds one sentence per fault."""

    def __init__(self, problems: List[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class HealthConfig:
    host: str = "127.0.0.1"
    port: int = 47101
    # Bounds of the overall status; DESIGN.md's values by default.
    depth_warning: int = 10
    depth_critical: int = 50
    depth_critical_after_s: float = 60.0
    drops_window_s: float = 900.0
    drops_warning: int = 5
    # The drop rate is judged only over at least this many commands: with a handful, one drop
    # would already be "1% or more" and mark the shard critical.
    drop_rate_min_sample: int = 100
    drop_rate_critical: float = 0.01
    # Warn when the newest incoming message is older than this; 0 leaves it unjudged (a quiet
    # night is not a fault for most personas).
    inbound_quiet_warning_s: float = 0.0


@dataclass(frozen=True)
class SendQueueConfig:
    max_depth: int = 500
    retries: int = 3
    backoff_s: Tuple[float, ...] = (2.0, 4.0, 8.0)
    expiry_s: float = 120.0
    tick_ms: int = 200
    # How long to look in chat.db for the outgoing rows after osascript returned.
    confirm_s: float = 10.0


@dataclass(frozen=True)
class RateLimitConfig:
    per_minute: int = 120
    # One chat may use a quarter of the shard's budget, so others still get through.
    per_recipient_per_minute: int = 30
    # New conversations are what spam filters watch: a few an hour keeps the number safe.
    first_contact_per_hour: int = 20


@dataclass(frozen=True)
class Config:
    shard_id: str
    persona: str
    phone_number: str
    backend_url: str
    token_file: str
    chat_db: str
    state_dir: str
    host: Optional[str] = None
    backend_timeout_s: float = 10.0
    health: HealthConfig = field(default_factory=HealthConfig)
    rate_limit: RateLimitConfig = field(default_factory=RateLimitConfig)
    send_queue: SendQueueConfig = field(default_factory=SendQueueConfig)
    poll_interval_s: float = 5.0
    osascript: str = "/usr/bin/osascript"
    launchctl: str = "/bin/launchctl"
    # Empty: the default, a folder beside chat.db (see attachments_folder).
    attachments_dir: str = ""
    log_level: str = "INFO"

    @property
    def attachments_folder(self) -> str:
        """Where attachments are staged: a folder Messages may read from."""
        if self.attachments_dir:
            return self.attachments_dir
        return os.path.join(os.path.dirname(self.chat_db), "Attachments-staging", "edge-relay")

    def read_token(self) -> str:
        """The bearer token; only called after `load` checked the file."""
        with open(self.token_file, encoding="utf-8") as handle:
            return handle.readline().strip()


TOP_KEYS = {
    "shard_id",
    "persona",
    "phone_number",
    "host",
    "backend",
    "chat_db",
    "state_dir",
    "health",
    "rate_limit",
    "send_queue",
    "poll_interval_s",
    "osascript",
    "launchctl",
    "attachments_dir",
    "log_level",
}
BACKEND_KEYS = {"url", "token_file", "timeout_s"}
HEALTH_KEYS = {
    "host",
    "port",
    "depth_warning",
    "depth_critical",
    "depth_critical_after_s",
    "drops_window_s",
    "drops_warning",
    "drop_rate_min_sample",
    "drop_rate_critical",
    "inbound_quiet_warning_s",
}
RATE_KEYS = {"per_minute", "per_recipient_per_minute", "first_contact_per_hour"}
QUEUE_KEYS = {"max_depth", "retries", "backoff_s", "expiry_s", "tick_ms", "confirm_s"}


class _Checker:
    """Reads typed values out of the parsed YAML and notes a sentence for each fault."""

    def __init__(self) -> None:
        self.problems: List[str] = []

    def section(self, data: Dict[str, Any], key: str, allowed: set) -> Dict[str, Any]:
        value = data.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.problems.append(f"{key} must be a mapping of settings, not {_kind(value)}")
            return {}
        for extra in sorted(set(value) - allowed):
            self.problems.append(
                f"{key}.{extra} is not a known setting; remove it or check its spelling"
            )
        return value

    def text(self, data: Dict[str, Any], key: str, name: str, required: bool) -> Optional[str]:
        value = data.get(key)
        if value is None:
            if required:
                self.problems.append(f"{name} is required; add it to the configuration")
            return None
        if not isinstance(value, str) or not value.strip():
            self.problems.append(f"{name} must be a non-empty string, not {_kind(value)}")
            return None
        return value

    def number(
        self,
        data: Dict[str, Any],
        key: str,
        name: str,
        default: float,
        minimum: float,
        integer: bool = False,
        maximum: Optional[float] = None,
    ) -> Any:
        value = data.get(key, default)
        wanted = "a whole number" if integer else "a number"
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not is_number or (integer and not isinstance(value, int)):
            self.problems.append(f"{name} must be {wanted}, not {_kind(value)}")
            return default
        if value < minimum or (maximum is not None and value > maximum):
            upper = f" and at most {maximum:g}" if maximum is not None else ""
            self.problems.append(f"{name} is {value!r}; it must be at least {minimum:g}{upper}")
            return default
        return value


def _kind(value: Any) -> str:
    if value is None:
        return "empty"
    if isinstance(value, bool):
        return f"the boolean {value!r}"
    if isinstance(value, (list, dict)):
        return f"a {'list' if isinstance(value, list) else 'mapping'}"
    return f"{value!r}"


def _within_messages_reach(path: str) -> bool:
    """Whether `path` is an absolute folder under a home's Library/Messages or Pictures."""
    if not os.path.isabs(path):
        return False
    parts = os.path.normpath(path).split(os.sep)
    for index in range(len(parts)):
        if parts[index] == "Pictures" or parts[index : index + 2] == ["Library", "Messages"]:
            return index >= 2  # a home folder comes first: /Users/<name>/...
    return False


def check_token_file(path: str) -> List[str]:
    """Faults of the token file: missing, empty, or readable by others than its owner."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return [f"backend.token_file '{path}' does not exist; write the shard's token there"]
    except OSError as error:
        return [f"backend.token_file '{path}' cannot be read ({error.strerror})"]
    if not stat.S_ISREG(info.st_mode):
        return [f"backend.token_file '{path}' is not a regular file"]
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        return [
            f"backend.token_file '{path}' is readable or writable by group or others "
            f"(mode {mode:04o}); run chmod 600 on it"
        ]
    try:
        with open(path, encoding="utf-8") as handle:
            token = handle.readline().strip()
    except OSError as error:
        return [f"backend.token_file '{path}' cannot be read ({error.strerror})"]
    except UnicodeDecodeError:
        return [f"backend.token_file '{path}' is not text; write the token as one line"]
    if not token:
        return [f"backend.token_file '{path}' is empty; write the shard's token on one line"]
    return []


def parse(data: Any) -> Config:
    """Builds a Config from parsed YAML, or raises ConfigError listing every fault."""
    if not isinstance(data, dict):
        raise ConfigError(["the configuration must be a YAML mapping of settings"])
    check = _Checker()
    for extra in sorted(set(data) - TOP_KEYS, key=str):
        check.problems.append(f"{extra} is not a known setting; remove it or check its spelling")

    shard_id = check.text(data, "shard_id", "shard_id", required=True)
    persona = check.text(data, "persona", "persona", required=True)
    if persona is not None and not PERSONA_RE.match(persona):
        check.problems.append(
            f"persona '{persona}' must be a lower-case letter then 1 to 19 letters or digits"
        )
    if shard_id is not None:
        match = SHARD_RE.match(shard_id)
        if not match or not 1 <= int(match.group(2)) <= 99:
            check.problems.append(
                f"shard_id '{shard_id}' must be <persona>-<NN> with NN from 01 to 99 (e.g. sage-01)"
            )
        elif persona is not None and match.group(1) != persona:
            check.problems.append(
                f"shard_id '{shard_id}' does not belong to persona '{persona}'; "
                f"use {persona}-NN or fix the persona"
            )

    phone = data.get("phone_number")
    if phone is None:
        check.problems.append("phone_number is required; add it in E.164 form (+15551230001)")
    elif not isinstance(phone, str) or not E164_RE.match(phone):
        check.problems.append(
            f"phone_number '{phone}' is not E.164 (+ and 8 to 15 digits); "
            "quote it in YAML so the + is kept"
        )
    host = check.text(data, "host", "host", required=False)

    backend = check.section(data, "backend", BACKEND_KEYS)
    if "backend" not in data:
        check.problems.append("backend is required; give backend.url and backend.token_file")
    url = check.text(backend, "url", "backend.url", required="backend" in data)
    if url is not None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            check.problems.append(
                f"backend.url '{url}' must be an http:// or https:// address with a host"
            )
    token_file = check.text(backend, "token_file", "backend.token_file", "backend" in data)
    if token_file is not None:
        check.problems.extend(check_token_file(token_file))
    timeout = check.number(backend, "timeout_s", "backend.timeout_s", 10.0, 0.1)

    chat_db = check.text(data, "chat_db", "chat_db", required=True)
    state_dir = check.text(data, "state_dir", "state_dir", required=True)

    health_data = check.section(data, "health", HEALTH_KEYS)
    health_host = health_data.get("host", "127.0.0.1")
    try:
        if not ipaddress.ip_address(str(health_host)).is_loopback:
            raise ValueError
    except ValueError:
        check.problems.append(
            f"health.host must be a loopback address (127.0.0.1 or ::1), not '{health_host}'"
        )
    defaults = HealthConfig()
    health = HealthConfig(
        host=str(health_host),
        port=check.number(health_data, "port", "health.port", 47101, 1, True, 65535),
        depth_warning=check.number(
            health_data, "depth_warning", "health.depth_warning", defaults.depth_warning, 0, True
        ),
        depth_critical=check.number(
            health_data,
            "depth_critical",
            "health.depth_critical",
            defaults.depth_critical,
            0,
            True,
        ),
        depth_critical_after_s=check.number(
            health_data,
            "depth_critical_after_s",
            "health.depth_critical_after_s",
            defaults.depth_critical_after_s,
            0,
        ),
        drops_window_s=check.number(
            health_data, "drops_window_s", "health.drops_window_s", defaults.drops_window_s, 1
        ),
        drops_warning=check.number(
            health_data, "drops_warning", "health.drops_warning", defaults.drops_warning, 0, True
        ),
        drop_rate_min_sample=check.number(
            health_data,
            "drop_rate_min_sample",
            "health.drop_rate_min_sample",
            defaults.drop_rate_min_sample,
            1,
            True,
        ),
        drop_rate_critical=check.number(
            health_data,
            "drop_rate_critical",
            "health.drop_rate_critical",
            defaults.drop_rate_critical,
            0.0001,
            maximum=1,
        ),
        inbound_quiet_warning_s=check.number(
            health_data,
            "inbound_quiet_warning_s",
            "health.inbound_quiet_warning_s",
            defaults.inbound_quiet_warning_s,
            0,
        ),
    )
    if health.depth_critical < health.depth_warning:
        check.problems.append(
            "health.depth_critical must not be below health.depth_warning; raise it"
        )

    rate = check.section(data, "rate_limit", RATE_KEYS)
    rate_limit = RateLimitConfig(
        per_minute=check.number(rate, "per_minute", "rate_limit.per_minute", 120, 1, True),
        per_recipient_per_minute=check.number(
            rate, "per_recipient_per_minute", "rate_limit.per_recipient_per_minute", 30, 1, True
        ),
        first_contact_per_hour=check.number(
            rate, "first_contact_per_hour", "rate_limit.first_contact_per_hour", 20, 1, True
        ),
    )

    queue_data = check.section(data, "send_queue", QUEUE_KEYS)
    retries = check.number(queue_data, "retries", "send_queue.retries", 3, 0, True)
    backoff = queue_data.get("backoff_s", [2, 4, 8])
    backoff_ok = (
        isinstance(backoff, list)
        and all(isinstance(b, (int, float)) and not isinstance(b, bool) and b > 0 for b in backoff)
        and len(backoff) >= retries
    )
    if not backoff_ok:
        check.problems.append(
            f"send_queue.backoff_s must be a list of at least {retries} positive numbers of "
            "seconds, one wait per retry (e.g. [2, 4, 8])"
        )
        backoff = [2, 4, 8]
    send_queue = SendQueueConfig(
        max_depth=check.number(queue_data, "max_depth", "send_queue.max_depth", 500, 1, True),
        retries=retries,
        backoff_s=tuple(float(b) for b in backoff),
        expiry_s=check.number(queue_data, "expiry_s", "send_queue.expiry_s", 120.0, 1),
        tick_ms=check.number(queue_data, "tick_ms", "send_queue.tick_ms", 200, 10, True),
        confirm_s=check.number(queue_data, "confirm_s", "send_queue.confirm_s", 10.0, 0.1),
    )

    poll = check.number(data, "poll_interval_s", "poll_interval_s", 5.0, 0.05)
    osascript = check.text(data, "osascript", "osascript", required=False) or "/usr/bin/osascript"
    if not (os.path.isfile(osascript) and os.access(osascript, os.X_OK)):
        check.problems.append(
            f"osascript '{osascript}' is not an executable file; "
            "give the path of osascript (/usr/bin/osascript on a Mac)"
        )
    launchctl = check.text(data, "launchctl", "launchctl", required=False) or "/bin/launchctl"
    attachments_dir = check.text(data, "attachments_dir", "attachments_dir", required=False)
    if attachments_dir is not None and not _within_messages_reach(attachments_dir):
        check.problems.append(
            f"attachments_dir '{attachments_dir}' is outside Messages' reach; Messages fails "
            "silently on such files: use a folder under the user's ~/Library/Messages or "
            "~/Pictures (absolute path)"
        )
    log_level = data.get("log_level", "INFO")
    if not isinstance(log_level, str) or log_level.upper() not in LOG_LEVELS:
        check.problems.append(f"log_level '{log_level}' must be one of {', '.join(LOG_LEVELS)}")
        log_level = "INFO"

    if check.problems:
        raise ConfigError(check.problems)
    return Config(
        shard_id=shard_id,
        persona=persona,
        phone_number=phone,
        host=host,
        backend_url=url.rstrip("/"),
        token_file=token_file,
        backend_timeout_s=float(timeout),
        chat_db=chat_db,
        state_dir=state_dir,
        health=health,
        rate_limit=rate_limit,
        send_queue=send_queue,
        poll_interval_s=float(poll),
        osascript=osascript,
        launchctl=launchctl,
        attachments_dir=attachments_dir or "",
        log_level=log_level.upper(),
    )


def load(path: str) -> Config:
    """Reads and checks the YAML file at `path`."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except FileNotFoundError:
        raise ConfigError([f"configuration file '{path}' does not exist"]) from None
    except OSError as error:
        reason = f"configuration file '{path}' cannot be read ({error.strerror})"
        raise ConfigError([reason]) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(
            [f"configuration file '{path}' is not valid YAML{where}; fix its syntax"]
        ) from None
    return parse(data)
