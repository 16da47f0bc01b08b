"""launchd as launchctl and plutil show it on macOS 14, for module tests.

What the double keeps from the real launchd: ``bootout`` returns before the job is gone
(the job stays visible to ``print`` for a few more probes, and ``bootstrap`` meanwhile
fails with 5: Input/output error, or refuses the label with 5 or 37 a moment longer);
a job is ``spawn scheduled`` before it is ``running``; a ``gui/<uid>`` domain exists only
for users with a GUI login session; a job that exits at once is ``not running`` with its
last exit code.
"""

import os
import plistlib

NOT_FOUND_SERVICE = 'Bad request.\nCould not find service "{label}" in domain for user gui: {uid}\n'

PRINT_TEMPLATE = """gui/{uid}/{label} = {{
\tactive count = {active}
\tpath = {plist}
\ttype = LaunchAgent
\tstate = {state}

\tprogram = /usr/local/archety/edge/releases/1.0.0-abc/bin/edge-relay
\targuments = {{
\t\t/usr/local/archety/edge/releases/1.0.0-abc/bin/edge-relay
\t\trun
\t}}

\tdefault environment = {{
\t\tPATH => /usr/bin:/bin:/usr/sbin:/sbin
\t}}

\tdomain = gui/{uid} [100005]
\tasid = 100005
\tminimum runtime = 10
\texit timeout = 5
\truns = {runs}
{pid_line}\timmediate reason = speculative
\tforks = 0
\texecs = {runs}
\tinitialized = 1
\ttrampolined = 1
\tstarted suspended = 0
\tproxy started suspended = 0
\tlast exit code = {last_exit}

\tevent triggers = {{
\t\tcom.archety.edge.relay.health = {{
\t\t\tstate = 0
\t\t\tpid = 1
\t\t}}
\t}}

\tspawn type = daemon (3)
\tproperties = keepalive | runatload | inferred program
}}
"""


class FakeLaunchd:
    def __init__(self, gui_uids=(502,)):
        self.gui_uids = set(gui_uids)
        self.jobs = {}
        self.calls = []
        self.exit_probes = 2
        self.spawn_probes = 1
        self.crash_with = None
        self.refuse_bootstrap = None
        # Answers (rc, stdout, stderr) bootstrap gives, one per call, before it works again:
        # launchd refusing a label it has not let go of yet.
        self.bootstrap_refusals = []
        self.refuse_bootout = None
        self.refuse_print = None
        # macOS 10.15 and later may answer a bootout it took with 36 while the job stops.
        self.bootout_in_progress = False
        self.next_pid = 4242

    def loaded(self, uid, label, plist, state="running"):
        self.jobs[(uid, label)] = {
            "plist": plist,
            "state": state,
            "pid": self.take_pid() if state == "running" else None,
            "runs": 1,
            "last_exit": "(never exited)",
            "leaving": None,
            "starting": 0,
        }

    def take_pid(self):
        self.next_pid += 1
        return self.next_pid

    def __call__(self, argv, data=None):
        self.calls.append(argv)
        tool = os.path.basename(argv[0])
        if tool == "plutil":
            return self.plutil(argv[1:])
        return getattr(self, "run_" + argv[1])(argv[2:])

    def plutil(self, args):
        assert args[0] == "-lint"
        path = args[1]
        try:
            with open(path, "rb") as handle:
                plistlib.load(handle)
        except Exception:
            return 1, f"{path}: Encountered unknown tag on line 1\n", ""
        return 0, f"{path}: OK\n", ""

    def split(self, target):
        _, uid, label = target.split("/", 2)
        return int(uid), label

    def run_print(self, args):
        if self.refuse_print:
            return self.refuse_print
        uid, label = self.split(args[0])
        if uid not in self.gui_uids:
            return 113, "", f"Bad request.\nCould not find domain for user gui: {uid}\n"
        job = self.jobs.get((uid, label))
        if job is None:
            return 113, "", NOT_FOUND_SERVICE.format(label=label, uid=uid)
        if job["leaving"] is not None:
            if job["leaving"] == 0:
                del self.jobs[(uid, label)]
                return 113, "", NOT_FOUND_SERVICE.format(label=label, uid=uid)
            job["leaving"] -= 1
        elif job["starting"]:
            job["starting"] -= 1
            if not job["starting"]:
                if self.crash_with:
                    job["state"], job["last_exit"] = "not running", self.crash_with
                else:
                    job["state"], job["pid"] = "running", self.take_pid()
        pid_line = f"\tpid = {job['pid']}\n" if job["pid"] else ""
        return (
            0,
            PRINT_TEMPLATE.format(
                uid=uid,
                label=label,
                plist=job["plist"],
                state=job["state"],
                active=1 if job["pid"] else 0,
                runs=job["runs"],
                pid_line=pid_line,
                last_exit=job["last_exit"],
            ),
            "",
        )

    def run_bootout(self, args):
        if self.refuse_bootout:
            return self.refuse_bootout
        uid, label = self.split(args[0])
        if uid not in self.gui_uids:
            return 125, "", "Boot-out failed: 125: Domain does not support specified action\n"
        job = self.jobs.get((uid, label))
        if job is None or job["leaving"] is not None:
            return 113, "", "Boot-out failed: 113: Could not find specified service\n"
        job["leaving"] = self.exit_probes
        if self.bootout_in_progress:
            return 36, "", "Boot-out failed: 36: Operation now in progress\n"
        return 0, "", ""

    def run_bootstrap(self, args):
        domain, plist = args
        uid = int(domain.split("/")[1])
        if uid not in self.gui_uids:
            return 125, "", "Bootstrap failed: 125: Domain does not support specified action\n"
        if self.refuse_bootstrap:
            return self.refuse_bootstrap
        if self.bootstrap_refusals:
            return self.bootstrap_refusals.pop(0)
        with open(plist, "rb") as handle:
            label = plistlib.load(handle)["Label"]
        if (uid, label) in self.jobs:
            return 5, "", "Bootstrap failed: 5: Input/output error\n"
        self.jobs[(uid, label)] = {
            "plist": plist,
            "state": "spawn scheduled",
            "pid": None,
            "runs": 1,
            "last_exit": "(never exited)",
            "leaving": None,
            "starting": self.spawn_probes,
        }
        return 0, "", ""

    def run_kickstart(self, args):
        raise AssertionError("kickstart does not re-read the plist and must never be used")
