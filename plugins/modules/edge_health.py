#!/usr/bin/python
# Copyright: archety.edge contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
module: edge_health
short_description: Wait until a shard's relay reports healthy on its /health endpoint
description:
  - Reads the JSON of a relay's C(/health) endpoint on 127.0.0.1 and judges it by the
    fleet's bounds, the gate a rolling deploy waits on before it moves to the next shard.
  - Judges the relay's checks (chat.db readable, backend reachable, registered, Messages
    sending, GUI session), the send queue's depth now and how long it has stayed high, the
    drops the relay counted in its recent window (C(drops_recent)), and the drop rate over
    that window. A depth or a drop that is long past does not count; the totals since the
    queue was created are only used for the rate of an older relay (see the notes).
  - Each verdict is C(healthy), C(warning) or C(critical) (C(unreachable) when the relay does
    not answer). The gate passes on C(healthy), or on C(warning) too with O(allow_warning).
  - Polls until the relay passes or O(timeout) seconds have passed (monotonic clock), and
    fails with the check and the figure that kept it from passing.
  - Finds the port from O(port), or from O(shard_id) in the health ports file the relay role
    keeps, or from the C(health.port) of the relay configuration O(config).
  - Runs on the Mac, under macOS's Python 3.9 or newer. Reads only; reads nothing in check
    mode.
version_added: "0.1.0"
author:
  - Archety edge team (@archety)
options:
  port:
    description: Health port of the relay on 127.0.0.1.
    type: int
  shard_id:
    description:
      - Shard whose relay to judge. Without O(port) and O(config), its port is read from
        O(ports_file). When the relay reports a shard id, it must be this one.
    type: str
  config:
    description: Path of the relay's C(config.yml); its C(health.port) is used.
    type: path
  ports_file:
    description: JSON file mapping each shard id of the Mac to its health port.
    type: path
    default: /usr/local/archety/edge/health-ports.json
  version:
    description:
      - Version the relay must report, so that a gate after a deploy judges the new release
        and not a relay that is still the old one.
    type: str
  pid:
    description:
      - Process id the relay must report (the C(pid) key of its C(/health)), so that the gate
        judges the process just started (the RV(archety.edge.launchd_job#module:pid) of its
        job) and not an earlier one still answering on the port.
      - A relay whose C(/health) has no C(pid) is too old to report it; the module then fails
        at once, saying so. Leave O(pid) out for such a relay.
      - Once that process has exited (a release that crashes on start, which launchd starts
        again under another pid), the module fails at once instead of waiting out O(timeout).
    type: int
  timeout:
    description: Seconds to wait for the relay to pass; 0 judges once.
    type: float
    default: 60
  interval:
    description: Seconds between two reads of C(/health).
    type: float
    default: 1
  stable_for:
    description:
      - Seconds the relay must stay passing, read after read, before the gate passes; catches
        a release that answers healthy once and then falls over.
    type: float
    default: 0
  allow_warning:
    description: Pass the gate on a C(warning) verdict too, not only on C(healthy).
    type: bool
    default: false
  depth_healthy:
    description: Largest send queue depth that is still healthy.
    type: int
    default: 10
  depth_warning:
    description:
      - Largest send queue depth that is a warning whatever its duration. A deeper queue is a
        warning until it has stayed deeper for O(depth_critical_after) seconds, then critical.
    type: int
    default: 50
  depth_critical_after:
    description:
      - Seconds the depth must stay above O(depth_warning) before it is critical, as the relay
        measures it (C(depth_high_for_s)), or read after read for an older relay (see the
        notes); 0 makes any such depth critical at once.
    type: float
    default: 60
  drops_healthy:
    description: Most drops in the relay's recent window that are still healthy.
    type: int
    default: 0
  drops_warning:
    description: Most drops in the relay's recent window that are a warning; more is critical.
    type: int
    default: 5
  drop_rate_warning:
    description:
      - Where warnings end, as O(drops_warning) for counts - a drop rate (0 to 1) above zero and
        below it is a warning, a rate at or above it is critical.
      - The rate is the drops of the relay's recent window over the sends offered in it
        (C(drops_recent) over C(drops_recent) + C(arrivals_recent)); for an older relay, the
        sends dropped over the sends enqueued while waiting.
    type: float
    default: 0.01
  drop_rate_min_sample:
    description:
      - Fewest sends offered in the relay's recent window (C(drops_recent) +
        C(arrivals_recent)) for the drop rate to be judged; with fewer, one drop would already
        be 1% or more. The drops are still judged by their count (O(drops_warning)).
      - The relay's own bound, C(health.drop_rate_min_sample), is 100 by default too. An older
        relay's rate, measured while waiting, has no minimum.
    type: int
    default: 100
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  platform:
    support: full
    platforms: darwin
notes:
  - The defaults are the fleet's bounds; each can be set. The relay counts C(drops_recent)
    and C(arrivals_recent) over its own window, C(health.drops_window_s) of its configuration
    (15 minutes by default, reported as C(window_s)), so the window is set there, not here.
  - A relay that reports its window's figures, C(arrivals_recent) and C(depth_high_for_s)
    beside C(drops_recent), is judged by them, as it judges itself. The drop rate is the
    window's, judged once at least O(drop_rate_min_sample) sends were offered in it, and a
    deep queue's duration is C(depth_high_for_s), so a single read (O(timeout=0)) finds a
    queue that has long been deep critical. RV(judged_on) is then C(relay_window).
  - The relay measures C(depth_high_for_s) above its own C(health.depth_critical) bound; keep
    O(depth_warning) equal to it (both are 50 by default). A depth above O(depth_warning) for
    which the relay reports no duration (its bound is higher) is timed from this module's
    first read that saw it.
  - An older relay reports neither figure, and is judged by this module's own measurement.
    The drop rate is taken from the relay's totals (C(totalEnqueued), C(totalDropped))
    between the first and the last read, and a depth's duration from the first read that saw
    it high, so a single read never finds a deep queue critical, only a warning.
    RV(judged_on) is then C(reads).
  - In check mode nothing is read, since the relay may not run yet (or runs an older
    release) before the real run; the result says so and RV(skipped) is true. A port that
    cannot be found yet (no ports file, the shard not in it) is reported, not a failure.
  - Only 127.0.0.1 is read; the relay serves its health on the loopback address only.
"""

EXAMPLES = r"""
- name: Wait until sage-01's relay is healthy on the new release
  archety.edge.edge_health:
    shard_id: sage-01
    version: 0.2.0
    timeout: 60
    stable_for: 3

- name: Start the relay, then judge the process launchd just started
  archety.edge.launchd_job:
    label: com.archety.edge.relay.sage-01
    plist: /Users/edge_sage_01/Library/LaunchAgents/com.archety.edge.relay.sage-01.plist
    user: edge_sage_01
  become: true
  register: edge_started

- name: Wait until that very process reports healthy
  archety.edge.edge_health:
    shard_id: sage-01
    pid: "{{ edge_started.pid }}"
    timeout: 60

- name: Judge a relay once, accepting a warning, with a stricter queue bound
  archety.edge.edge_health:
    port: 47101
    timeout: 0
    allow_warning: true
    depth_healthy: 5
"""

RETURN = r"""
status:
  description: Verdict of the last read, C(healthy), C(warning), C(critical) or C(unreachable).
  returned: unless skipped
  type: str
  sample: healthy
reasons:
  description: What kept the relay from being healthy at the last read, one sentence each.
  returned: unless skipped
  type: list
  elements: str
  sample: ["send queue depth 73 is above 50 (critical if it stays so for 60 s)"]
health:
  description: The last JSON the relay answered, or null when it did not answer.
  returned: unless skipped
  type: dict
  sample:
    status: healthy
    version: 0.2.0
    pid: 4243
    shard_id: sage-01
    send_queue: {depth: 0, totalEnqueued: 1542, totalDelivered: 1539, totalDropped: 0}
    drops_recent: 0
    arrivals_recent: 212
    window_s: 900
    depth_high_for_s: null
judged_on:
  description:
    - How the queue's recent past was judged at the last read. C(relay_window) when by the
      figures of the relay's window (C(arrivals_recent), C(depth_high_for_s)); C(reads) when
      by this module's measurement between its reads, for an older relay that lacks them.
    - Null when the relay did not answer.
  returned: unless skipped
  type: str
  sample: relay_window
port:
  description: The health port read; null in check mode when it cannot be found yet.
  returned: always
  type: int
  sample: 47101
elapsed:
  description: Seconds waited.
  returned: unless skipped
  type: float
  sample: 2.5
skipped:
  description: True in check mode, when nothing was read.
  returned: always
  type: bool
  sample: false
"""

import json  # noqa: E402  (Ansible keeps the documentation first)
import math  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible.module_utils.urls import open_url  # noqa: E402
from ansible_collections.archety.edge.plugins.module_utils.waiter import wait_for  # noqa: E402

RANK = {"healthy": 0, "warning": 1, "critical": 2, "unreachable": 3}
READ_TIMEOUT = 5
CONFIG_PORT = re.compile(r"^\s+port:\s*([0-9]+)\s*(#.*)?$")
TOO_OLD_FOR_PID = (
    "the relay is too old to report its pid (its /health has no pid): upgrade the relay, "
    "or leave pid out"
)
# Reported beside drops_recent by a relay that judges its own window: the gate judges them too.
WINDOW_FIGURES = ("arrivals_recent", "depth_high_for_s")


def process_exists(pid):
    """Whether a process with this id is alive (the module runs as root on the Mac)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class PortUnknown(Exception):
    """The health port cannot be found; the message says where it was looked for."""


def port_from_config(path):
    """``health.port`` of a relay configuration, read without PyYAML (macOS's Python lacks it)."""
    in_health = False
    with open(path) as handle:
        for line in handle:
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if not line[0].isspace():
                in_health = line.split(":", 1)[0].strip() == "health"
                continue
            match = CONFIG_PORT.match(line)
            if in_health and match:
                return int(match.group(1))
    return None


def find_port(params):
    if params["port"]:
        return params["port"]
    if params["config"]:
        try:
            port = port_from_config(params["config"])
        except (OSError, UnicodeDecodeError) as error:
            raise PortUnknown(
                f"cannot read the relay configuration {params['config']}: {error}"
            ) from error
        if not port:
            raise PortUnknown(
                f"the relay configuration {params['config']} has no health.port: "
                "write it there or give port."
            )
        return port
    path = params["ports_file"]
    try:
        with open(path) as handle:
            ports = json.load(handle)
    except (OSError, ValueError) as error:
        raise PortUnknown(
            f"cannot read the health ports of this Mac from {path} ({error}): "
            "give port, or config, or the right ports_file."
        ) from error
    if not isinstance(ports, dict):
        raise PortUnknown(
            f"{path} is not a JSON object of shard ids and ports: give port, or config, or the "
            "right ports_file."
        )
    if params["shard_id"] not in ports:
        raise PortUnknown(
            f"shard {params['shard_id']} has no health port in {path} (it has "
            f"{', '.join(sorted(ports)) or 'none'}): check the shard id, or add the shard first."
        )
    port = ports[params["shard_id"]]
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise PortUnknown(
            f"the health port of shard {params['shard_id']} in {path} is {port!r}, not a TCP "
            "port: give port, or rewrite the file with the relay role."
        )
    return port


def count(value):
    """A figure of the relay's JSON as a whole number of 0 or more, or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return value if isinstance(value, int) and value >= 0 else None


def duration(value):
    """A figure of the relay's JSON as seconds (a finite number of 0 or more), or None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) and value >= 0 else None


class Gate:
    """Reads /health and judges it by the figures of the relay's recent window when it reports
    them; for an older relay, keeps what measuring that past itself needs: the totals of the
    first read (the drop rate spans the wait) and since when the queue has been too deep."""

    def __init__(self, module, port):
        self.module = module
        self.params = module.params
        self.url = f"http://127.0.0.1:{port}/health"
        self.first_totals = None
        self.deep_since = None
        self.passing_since = None
        self.judged_on = None

    def read(self):
        try:
            # A critical relay answers 503 with its JSON body: read the body either way.
            response = open_url(self.url, timeout=READ_TIMEOUT, validate_certs=False)
            body = response.read()
        except Exception as error:  # noqa: BLE001  (urllib raises many kinds; all mean "no answer")
            body = getattr(error, "read", None) and error.read()
            if not body:
                return None, f"no answer from {self.url}: {getattr(error, 'reason', error)}"
        try:
            health = json.loads(body)
        except ValueError:
            return None, f"{self.url} did not answer JSON"
        if not isinstance(health, dict):
            return None, f"{self.url} did not answer a JSON object"
        return health, None

    def judge(self, health, at):
        """(status, reasons, hopeless) by this module's bounds, for a read made at ``at``."""
        p = self.params
        reasons, status = [], "healthy"

        def worse(level, reason):
            nonlocal status
            reasons.append(reason)
            if RANK[level] > RANK[status]:
                status = level

        def figure(mapping, key, name):
            value = count(mapping.get(key, 0))
            if value is None:
                worse("critical", f"the relay reported {name} as {mapping.get(key)!r}, not a count")
                return 0
            return value

        def seconds(key):
            """The relay's figure ``key`` in seconds; None when it is null or not seconds."""
            if health.get(key) is None:
                return None
            value = duration(health[key])
            if value is None:
                worse("critical", f"the relay reported {key} as {health[key]!r}, not seconds")
            return value

        window = all(key in health for key in WINDOW_FIGURES)
        self.judged_on = "relay_window" if window else "reads"
        hopeless = False
        if p["shard_id"] and health.get("shard_id") not in (None, p["shard_id"]):
            worse("critical", f"the relay on this port is shard {health.get('shard_id')}")
        if p["version"] and health.get("version") != p["version"]:
            worse("critical", f"the relay runs version {health.get('version')}, not {p['version']}")
        if p["pid"] is not None:
            if "pid" not in health:
                worse("critical", TOO_OLD_FOR_PID)
                hopeless = True
            elif health["pid"] != p["pid"]:
                worse("critical", f"the relay answering is pid {health['pid']}, not {p['pid']}")
        checks = health.get("checks")
        for name, check in sorted(checks.items() if isinstance(checks, dict) else []):
            if isinstance(check, dict) and not check.get("ok", False):
                worse("critical", f"check {name} failed: {check.get('detail', 'no detail')}")

        queue = health.get("send_queue")
        queue = queue if isinstance(queue, dict) else {}
        depth = figure(queue, "depth", "send_queue.depth")
        high_for = seconds("depth_high_for_s") if window else None
        if depth > p["depth_warning"]:
            if self.deep_since is None:
                self.deep_since = at
            # The relay's own duration when it has one: it saw the depth rise, between reads too.
            lasted = at - self.deep_since if high_for is None else high_for
            if lasted >= p["depth_critical_after"]:
                worse(
                    "critical",
                    f"send queue depth {depth} is above {p['depth_warning']}, and has been "
                    f"for {lasted:.1f} s",
                )
            else:
                worse(
                    "warning",
                    f"send queue depth {depth} is above {p['depth_warning']} (critical if it "
                    f"stays so for {p['depth_critical_after']:g} s)",
                )
        else:
            self.deep_since = None
            if depth > p["depth_healthy"]:
                worse("warning", f"send queue depth {depth} is above {p['depth_healthy']}")

        drops = figure(health, "drops_recent", "drops_recent")
        if drops > p["drops_warning"]:
            worse("critical", f"{drops} sends dropped recently, more than {p['drops_warning']}")
        elif drops > p["drops_healthy"]:
            worse("warning", f"{drops} sends dropped recently, more than {p['drops_healthy']}")

        if window:
            # The relay's rate: the window's drops over the sends offered in it.
            offered = drops + figure(health, "arrivals_recent", "arrivals_recent")
            span = seconds("window_s")
            if drops > 0 and offered >= p["drop_rate_min_sample"]:
                rate = drops / offered
                level = "critical" if rate >= p["drop_rate_warning"] else "warning"
                where = f"the relay's last {span:g} s" if span else "the relay's recent window"
                worse(level, f"{drops} of {offered} sends offered in {where} dropped ({rate:.1%})")
            return status, reasons, hopeless

        # An older relay reports totals only: the rate is measured over this module's wait.
        totals = (
            figure(queue, "totalEnqueued", "send_queue.totalEnqueued"),
            figure(queue, "totalDropped", "send_queue.totalDropped"),
        )
        if self.first_totals is None:
            self.first_totals = totals
        enqueued = totals[0] - self.first_totals[0]
        dropped = totals[1] - self.first_totals[1]
        if dropped > 0:
            rate = dropped / max(enqueued, dropped)
            level = "critical" if rate >= p["drop_rate_warning"] else "warning"
            worse(level, f"{dropped} of {enqueued} sends dropped while waiting ({rate:.1%})")
        return status, reasons, hopeless

    def probe(self):
        at = time.monotonic()
        started = self.params["pid"]
        if started is not None and not process_exists(started):
            # launchd starts the job again only after its ThrottleInterval, under another pid:
            # the process this gate was asked to judge can no longer pass.
            return {
                "status": "critical",
                "reasons": [
                    f"the relay started as pid {started} has exited: read the relay's log "
                    "(~/Library/Logs/edge-relay/relay.log of the shard's user) for why"
                ],
                "health": None,
                "hopeless": True,
                "judged_on": None,
                "at": at,
            }
        health, problem = self.read()
        if health is None:
            return {
                "status": "unreachable",
                "reasons": [problem],
                "health": None,
                "hopeless": False,
                "judged_on": None,
                "at": at,
            }
        status, reasons, hopeless = self.judge(health, at)
        return {
            "status": status,
            "reasons": reasons,
            "health": health,
            "hopeless": hopeless,
            "judged_on": self.judged_on,
            "at": at,
        }

    def passes(self, verdict):
        wanted = RANK["warning"] if self.params["allow_warning"] else RANK["healthy"]
        if RANK[verdict["status"]] > wanted:
            self.passing_since = None
            return False
        if self.passing_since is None:
            self.passing_since = verdict["at"]
        return verdict["at"] - self.passing_since >= self.params["stable_for"]


def check_bounds(module):
    p = module.params
    if p["port"] is not None and not 0 < p["port"] < 65536:
        module.fail_json(msg=f"port {p['port']} is not a TCP port (1 to 65535).")
    if p["pid"] is not None and p["pid"] < 1:
        module.fail_json(msg=f"pid {p['pid']} is not a process id (1 or more).")
    negative = [
        name
        for name in (
            "depth_healthy",
            "depth_warning",
            "drops_healthy",
            "drops_warning",
            "drop_rate_min_sample",
        )
        if p[name] < 0
    ]
    if negative:
        module.fail_json(msg=f"{', '.join(negative)} must be 0 or more.")
    if p["depth_healthy"] > p["depth_warning"] or p["drops_healthy"] > p["drops_warning"]:
        module.fail_json(
            msg="each healthy bound must be at most its warning bound: got depth "
            f"{p['depth_healthy']}/{p['depth_warning']}, drops "
            f"{p['drops_healthy']}/{p['drops_warning']}."
        )
    if not 0 < p["drop_rate_warning"] <= 1:
        module.fail_json(
            msg=f"drop_rate_warning {p['drop_rate_warning']:g} is not a rate: give more than 0 "
            "and at most 1, as 0.01 for 1%."
        )
    if p["timeout"] < 0 or p["interval"] <= 0 or p["stable_for"] < 0:
        module.fail_json(msg="timeout and stable_for must be 0 or more, interval more than 0.")
    if p["depth_critical_after"] < 0:
        module.fail_json(msg="depth_critical_after must be 0 or more seconds.")


def argument_spec():
    return dict(
        port=dict(type="int"),
        shard_id=dict(type="str"),
        config=dict(type="path"),
        ports_file=dict(type="path", default="/usr/local/archety/edge/health-ports.json"),
        version=dict(type="str"),
        pid=dict(type="int"),
        timeout=dict(type="float", default=60),
        interval=dict(type="float", default=1),
        stable_for=dict(type="float", default=0),
        allow_warning=dict(type="bool", default=False),
        depth_healthy=dict(type="int", default=10),
        depth_warning=dict(type="int", default=50),
        depth_critical_after=dict(type="float", default=60),
        drops_healthy=dict(type="int", default=0),
        drops_warning=dict(type="int", default=5),
        drop_rate_warning=dict(type="float", default=0.01),
        drop_rate_min_sample=dict(type="int", default=100),
    )


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(),
        required_one_of=[("port", "shard_id", "config")],
        mutually_exclusive=[("port", "config")],
        supports_check_mode=True,
    )
    p = module.params
    check_bounds(module)

    try:
        port = find_port(p)
    except PortUnknown as problem:
        if not module.check_mode:
            module.fail_json(msg=str(problem))
        # A dry run before the relay role has written the ports file: nothing to judge yet.
        module.exit_json(
            changed=False,
            skipped=True,
            port=None,
            msg=f"check mode: the health port is not known yet ({problem}); nothing read",
        )
    who = f"shard {p['shard_id']}" if p["shard_id"] else f"the relay on port {port}"
    if module.check_mode:
        module.exit_json(
            changed=False,
            skipped=True,
            port=port,
            msg=f"check mode: {who} would be read on 127.0.0.1:{port}/health, not read now",
        )

    gate = Gate(module, port)
    result = wait_for(
        gate.probe,
        gate.passes,
        p["timeout"] + p["stable_for"],
        p["interval"],
        hopeless=lambda verdict: verdict["hopeless"],
    )
    verdict = result.value
    outcome = dict(
        changed=False,
        skipped=False,
        port=port,
        status=verdict["status"],
        reasons=verdict["reasons"],
        health=verdict["health"],
        judged_on=verdict["judged_on"],
        elapsed=round(result.elapsed, 2),
    )
    if not result.ready:
        why = "; ".join(verdict["reasons"]) or "it was healthy, but not for long enough"
        module.fail_json(
            msg=f"{who} is not healthy after {result.elapsed:.0f} s: {verdict['status']}, {why}.",
            **outcome,
        )
    module.exit_json(**outcome)


if __name__ == "__main__":
    main()
