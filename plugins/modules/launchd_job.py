#!/usr/bin/python
# Copyright: archety.edge contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
module: launchd_job
short_description: Load, unload or reload a launchd job in a user's GUI domain
description:
  - Manages one launchd job in the C(gui/<uid>) domain of a user with C(launchctl
    bootstrap), C(bootout) and C(print), the way a shard's relay runs on a Mac.
  - Validates the plist with C(plutil -lint) and refuses a group- or world-writable
    plist, which launchd would refuse too.
  - Remembers the SHA-256 of the plist it last bootstrapped for each domain and label in
    O(state_dir), so a changed plist is reloaded (bootout, wait until gone, bootstrap),
    even when an earlier run was interrupted half way.
  - Waits until the job is running with a pid, and reports the job's last exit code when
    it does not get there.
  - Runs on the Mac as root, under macOS's Python 3.9 or newer.
version_added: "0.1.0"
author:
  - Archety edge team (@archety)
options:
  label:
    description: The job's label, for example C(com.archety.edge.relay.sage-01).
    type: str
    required: true
  plist:
    description:
      - Path of the job's plist. Required for O(state=bootstrapped) and O(state=restarted).
        Its C(Label) must equal O(label).
    type: path
  uid:
    description: User id whose C(gui/<uid>) domain holds the job. Give O(uid) or O(user).
    type: int
  user:
    description: Short name of the user whose C(gui/<uid>) domain holds the job.
    type: str
  state:
    description:
      - V(bootstrapped) loads the job, reloading it when the plist changed.
      - V(booted_out) unloads the job and waits until launchd has let it go.
      - V(restarted) unloads and loads the job again, so launchd re-reads the plist.
    type: str
    choices: [bootstrapped, booted_out, restarted]
    default: bootstrapped
  wait_timeout:
    description:
      - Seconds to wait for the job to be gone after a bootout, for launchd to take the job
        again right after it let it go, and for the job to be running after a bootstrap.
    type: float
    default: 30
  state_dir:
    description: Folder where the module records the SHA-256 of each plist it bootstrapped.
    type: path
    default: /private/var/db/archety-edge/launchd
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  platform:
    support: full
    platforms: darwin
notes:
  - The C(gui/<uid>) domain exists only while the user is logged in at the login window
    (fast user switching keeps several users logged in). No script can log a user in; the
    module fails with a sentence saying so, except for O(state=booted_out), which has nothing
    to do then.
  - C(launchctl kickstart -k) is never used, since it restarts a job without re-reading its
    plist.
  - launchctl's failures are explained with what to do, by their exit status - 1 (not
    root), 5 and 37 (the job still loaded or still leaving), 113 (no such job), 119 (the job
    is disabled), 122 (the plist's owner or mode), 125 (no GUI session) - and their words.
    A bootout answered with 36 (still in progress) is waited on like any other. Right after
    its own bootout, a bootstrap refused with 5 or 37 is tried again until O(wait_timeout),
    since launchd lets go of a label a moment after C(launchctl print) stops showing it.
  - A job found loaded with no recorded SHA-256 (loaded by hand, or by another tool) is
    reloaded once, since the module cannot know which plist it was loaded from.
  - The output of C(launchctl print) is not a stable format; only the C(state), C(pid) and
    C(last exit code) lines of the job are read.
  - Must run as root, with C(become).
"""

EXAMPLES = r"""
- name: Run the shard's relay in its user's GUI session
  archety.edge.launchd_job:
    label: com.archety.edge.relay.sage-01
    plist: /Users/edge_sage_01/Library/LaunchAgents/com.archety.edge.relay.sage-01.plist
    user: edge_sage_01
  become: true

- name: Stop the relay of a retired shard
  archety.edge.launchd_job:
    label: com.archety.edge.relay.sage-07
    uid: 507
    state: booted_out
  become: true
"""

RETURN = r"""
domain:
  description: The launchd domain of the job.
  returned: always
  type: str
  sample: gui/502
label:
  description: The job's label.
  returned: always
  type: str
  sample: com.archety.edge.relay.sage-01
state:
  description: The job's state as C(launchctl print) reports it, or C(not loaded).
  returned: always
  type: str
  sample: running
pid:
  description: The job's process id, or null when it is not running.
  returned: always
  type: int
  sample: 4242
plist_sha256:
  description: SHA-256 of the plist bootstrapped (or found unchanged); null when booted out.
  returned: always
  type: str
  sample: 9f2c1e0b7a4d4f6e8c3b2a1908f7e6d5c4b3a2918f7e6d5c4b3a2918f7e6d5c4
commands:
  description: The changing launchctl commands run, or that would run in check mode.
  returned: always
  type: list
  elements: str
  sample:
    - launchctl bootout gui/502/com.archety.edge.relay.sage-01
    - launchctl bootstrap gui/502
      /Users/edge_sage_01/Library/LaunchAgents/com.archety.edge.relay.sage-01.plist
"""

import hashlib  # noqa: E402  (Ansible keeps the documentation first)
import os  # noqa: E402
import plistlib  # noqa: E402
import pwd  # noqa: E402
import re  # noqa: E402
import stat  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.archety.edge.plugins.module_utils.macos import (  # noqa: E402
    command_line,
    output_of,
    sentence,
)
from ansible_collections.archety.edge.plugins.module_utils.waiter import wait_for  # noqa: E402

NOT_LOADED = "not loaded"
# launchctl's exit statuses: errno values, then launchd's own codes (`launchctl error N`).
NOT_PERMITTED = 1
NO_SUCH_FILE = 2
NO_SUCH_PROCESS = 3
IO_ERROR = 5
IN_PROGRESS = 36
ALREADY = 37
SERVICE_NOT_FOUND = 113
SERVICE_DISABLED = 119
BAD_PERMISSIONS = 122
DOMAIN_UNSUPPORTED = 125
AS_ROOT = "Run the task as root (become: true): only root acts on another user's gui domain."
POLL_INTERVAL = 0.25
PRINT_KEY = re.compile(r"^(\s*)(state|pid|last exit code) = (.*)$")


def parse_print(text):
    """The job's own ``state``, ``pid`` and ``last exit code`` from ``launchctl print``.

    Nested blocks (endpoints, event triggers) may hold keys of the same name; the job's
    own keys are the least indented ones.
    """
    found = {}
    for line in text.splitlines():
        match = PRINT_KEY.match(line)
        if not match:
            continue
        depth, key, value = len(match.group(1).expandtabs(8)), match.group(2), match.group(3)
        if key not in found or depth < found[key][0]:
            found[key] = (depth, value.strip())
    pid = found.get("pid", (0, ""))[1]
    return {
        "loaded": True,
        "state": found.get("state", (0, "unknown"))[1],
        "pid": int(pid) if pid.isdigit() else None,
        "last_exit_code": found.get("last exit code", (0, None))[1],
    }


class LaunchdJob:
    def __init__(self, module, uid, user_name):
        self.module = module
        self.label = module.params["label"]
        self.uid = uid
        self.user_name = user_name
        self.domain = f"gui/{uid}"
        self.target = f"{self.domain}/{self.label}"
        self.launchctl = module.get_bin_path("launchctl", required=True)
        self.commands = []
        self.changed = False
        self.booted_out = False
        self.record = os.path.join(module.params["state_dir"], f"gui-{uid}", f"{self.label}.sha256")

    def no_gui_session(self):
        who = self.user_name
        self.module.fail_json(
            msg=f"{self.domain} does not exist: {who} has no GUI login session on this Mac. "
            f"Log {who} in at the login window (fast user switching keeps it logged in), "
            "then run again.",
            commands=self.commands,
        )

    def probe(self):
        rc, out, err = self.module.run_command([self.launchctl, "print", self.target])
        if rc == 0:
            return parse_print(out)
        text = f"{out}\n{err}"
        if "Could not find domain" in text or rc == DOMAIN_UNSUPPORTED:
            if self.module.params["state"] == "booted_out":
                # No GUI session, no domain: nothing of the job is left to boot out.
                return {"loaded": False, "state": NOT_LOADED, "pid": None, "last_exit_code": None}
            self.no_gui_session()
        if rc == SERVICE_NOT_FOUND or "Could not find service" in text:
            return {"loaded": False, "state": NOT_LOADED, "pid": None, "last_exit_code": None}
        self.module.fail_json(
            msg=f"launchctl print {self.target} failed (exit {rc}): {output_of(out, err)}",
            commands=self.commands,
        )
        return None

    def change(self, argv):
        self.commands.append(command_line(argv))
        self.changed = True
        if self.module.check_mode:
            return 0, "", ""
        return self.module.run_command(argv)

    def bootout(self):
        rc, out, err = self.change([self.launchctl, "bootout", self.target])
        # 36: launchd took the bootout and is still stopping the job, as it often is.
        # 3, 113: gone already (a concurrent bootout, or the job exited for good).
        if rc not in (0, IN_PROGRESS, NO_SUCH_PROCESS, SERVICE_NOT_FOUND):
            if rc == DOMAIN_UNSUPPORTED:
                self.no_gui_session()
            advice = AS_ROOT if rc == NOT_PERMITTED else "Read the system log for the reason."
            self.module.fail_json(
                msg=f"launchctl bootout {self.target} failed (exit {rc}): "
                f"{sentence(output_of(out, err))} {advice}",
                commands=self.commands,
            )
        self.booted_out = True
        self.forget()
        if self.module.check_mode:
            return
        # bootout returns while the job is still exiting; bootstrapping now would fail with 5.
        gone = wait_for(
            self.probe,
            lambda job: not job["loaded"],
            self.module.params["wait_timeout"],
            POLL_INTERVAL,
        )
        if not gone.ready:
            self.module.fail_json(
                msg=f"{self.target} was still loaded {self.module.params['wait_timeout']:g} s "
                f"after bootout (state = {gone.value['state']}, pid = {gone.value['pid']}): "
                "its process does not exit. Check what it is doing, or raise wait_timeout.",
                commands=self.commands,
            )

    def bootstrap(self, plist, digest):
        argv = [self.launchctl, "bootstrap", self.domain, plist]
        rc, out, err = self.change(argv)
        if rc in (IO_ERROR, ALREADY) and self.booted_out and not self.module.check_mode:
            # launchd lets go of a label a moment after print stops showing it; until then it
            # refuses the label with 5 or 37. Only a job this run booted out is retried.
            retried = wait_for(
                lambda: self.module.run_command(argv),
                lambda answer: answer[0] not in (IO_ERROR, ALREADY),
                self.module.params["wait_timeout"],
                POLL_INTERVAL,
            )
            rc, out, err = retried.value
        if rc != 0:
            self.refused_bootstrap(plist, rc, output_of(out, err))
        self.remember(digest)
        if self.module.check_mode:
            return {"loaded": True, "state": "running", "pid": None, "last_exit_code": None}
        running = wait_for(
            self.probe,
            lambda job: job["loaded"] and job["state"] == "running" and job["pid"],
            self.module.params["wait_timeout"],
            POLL_INTERVAL,
        )
        if not running.ready:
            job = running.value
            if not job["loaded"]:
                reason = f"launchd lost it again: check that the Label in {plist} is {self.label}"
            else:
                reason = f"state = {job['state']}, last exit code = {job['last_exit_code']}"
            self.module.fail_json(
                msg=f"{self.target} did not reach state running within "
                f"{self.module.params['wait_timeout']:g} s ({reason}). Read the job's log "
                "(StandardErrorPath in its plist) for why it exits.",
                commands=self.commands,
            )
        return running.value

    def refused_bootstrap(self, plist, rc, said):
        if rc == DOMAIN_UNSUPPORTED:
            self.no_gui_session()
        if rc == BAD_PERMISSIONS or "permissions" in said or "ownership" in said:
            advice = (
                f"launchd refused {plist} for its owner or permissions: make it owned by "
                "root:wheel (or the user) with mode 0644."
            )
        elif rc in (IO_ERROR, ALREADY) and self.booted_out:
            advice = (
                f"launchd still held {self.label} {self.module.params['wait_timeout']:g} s after "
                "it was booted out: its process may not exit. Check it with `launchctl print "
                f"{self.target}`, or raise wait_timeout."
            )
        elif rc in (IO_ERROR, ALREADY):
            advice = (
                f"{self.label} is already loaded in {self.domain}, or a previous instance "
                "is still exiting. Run again once `launchctl print "
                f"{self.target}` says it is gone, or use state=restarted."
            )
        elif rc == SERVICE_NOT_FOUND:
            advice = f"launchd found no job in {plist}: check its Label and Program."
        elif rc == SERVICE_DISABLED:
            advice = (
                f"{self.label} is disabled in {self.domain}: enable it with `launchctl enable "
                f"{self.target}`, then run again."
            )
        elif rc == NOT_PERMITTED:
            advice = AS_ROOT
        elif rc == NO_SUCH_FILE:
            advice = f"{plist} went away after it was checked: write it again, then run again."
        else:
            advice = "Read the job's plist and the system log for the reason."
        self.module.fail_json(
            msg=f"launchctl bootstrap {self.domain} {plist} failed (exit {rc}): "
            f"{sentence(said)} {advice}",
            commands=self.commands,
        )

    def recorded(self):
        try:
            with open(self.record) as handle:
                return handle.read().strip() or None
        except OSError:
            return None

    def remember(self, digest):
        if self.module.check_mode:
            return
        partial = self.record + ".tmp"
        try:
            os.makedirs(os.path.dirname(self.record), mode=0o700, exist_ok=True)
            with open(partial, "w") as handle:
                handle.write(digest + "\n")
            os.replace(partial, self.record)
        except OSError as err:
            self.unrecorded(err, "the job runs, but the next run will reload it once")

    def forget(self):
        if self.module.check_mode:
            return
        try:
            os.unlink(self.record)
        except FileNotFoundError:
            pass
        except OSError as err:
            self.unrecorded(err, "the next run may judge the job by a plist it no longer runs")

    def unrecorded(self, err, consequence):
        self.module.fail_json(
            msg=f"cannot keep the plist's SHA-256 in {self.record} ({err.strerror}): "
            f"{consequence}. Give a state_dir that root can write.",
            commands=self.commands,
        )


def check_plist(module, path, label):
    """Refuse a plist launchd would refuse, before touching the running job. Returns its hash."""
    try:
        info = os.stat(path)
    except OSError as err:
        module.fail_json(msg=f"plist {path} cannot be read: {err.strerror}. Write it first.")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        module.fail_json(
            msg=f"plist {path} is group- or world-writable (mode "
            f"{stat.S_IMODE(info.st_mode):04o}): launchd refuses such a plist. Make it 0644."
        )
    plutil = module.get_bin_path("plutil", required=True)
    rc, out, err = module.run_command([plutil, "-lint", path])
    if rc != 0:
        module.fail_json(msg=f"plist {path} is not valid: {output_of(out, err)}")
    with open(path, "rb") as handle:
        content = handle.read()
    try:
        found = plistlib.loads(content).get("Label")
    except Exception as err:  # plutil accepted it; plistlib's reasons vary by format
        module.fail_json(msg=f"plist {path} could not be read as a property list: {err}")
    if found != label:
        module.fail_json(
            msg=f"plist {path} has Label {found!r}, not {label!r}: launchd knows a job by the "
            "Label in its plist. Make them the same."
        )
    return hashlib.sha256(content).hexdigest()


def resolve_user(module):
    uid, name = module.params["uid"], module.params["user"]
    if name is not None:
        try:
            return pwd.getpwnam(name).pw_uid, name
        except KeyError:
            module.fail_json(msg=f"user {name} does not exist on this Mac: create it first.")
    try:
        return uid, pwd.getpwuid(uid).pw_name
    except KeyError:
        return uid, f"the user with uid {uid}"


def main():
    module = AnsibleModule(
        argument_spec=dict(
            label=dict(type="str", required=True),
            plist=dict(type="path"),
            uid=dict(type="int"),
            user=dict(type="str"),
            state=dict(
                type="str",
                choices=["bootstrapped", "booted_out", "restarted"],
                default="bootstrapped",
            ),
            wait_timeout=dict(type="float", default=30),
            state_dir=dict(type="path", default="/private/var/db/archety-edge/launchd"),
        ),
        mutually_exclusive=[("uid", "user")],
        required_one_of=[("uid", "user")],
        required_if=[
            ("state", "bootstrapped", ("plist",)),
            ("state", "restarted", ("plist",)),
        ],
        supports_check_mode=True,
    )
    params = module.params
    if params["wait_timeout"] <= 0:
        module.fail_json(msg="wait_timeout must be more than 0 seconds.")
    uid, user_name = resolve_user(module)
    job = LaunchdJob(module, uid, user_name)
    digest = None
    if params["state"] != "booted_out":
        if module.check_mode and not os.path.exists(params["plist"]):
            # A dry run of a play that writes the plist first: the file is not there to judge,
            # but the job would be (re)loaded from it.
            before = job.probe()
            if before["loaded"]:
                job.change([job.launchctl, "bootout", job.target])
            job.change([job.launchctl, "bootstrap", job.domain, params["plist"]])
            module.exit_json(
                changed=True,
                domain=job.domain,
                label=params["label"],
                state="running",
                pid=None,
                plist_sha256=None,
                commands=job.commands,
                diff=dict(
                    before={"loaded": before["loaded"], "plist_sha256": job.recorded()},
                    after={"loaded": True, "plist_sha256": None},
                ),
                msg=f"plist {params['plist']} does not exist yet; it would be bootstrapped "
                "once written.",
            )
        digest = check_plist(module, params["plist"], params["label"])

    before = job.probe()
    recorded = job.recorded()
    after = before
    if params["state"] == "booted_out":
        if before["loaded"]:
            job.bootout()
            after = {"loaded": False, "state": NOT_LOADED, "pid": None, "last_exit_code": None}
        else:
            job.forget()
        digest = None
    elif params["state"] == "restarted" or (before["loaded"] and recorded != digest):
        if before["loaded"]:
            job.bootout()
        after = job.bootstrap(params["plist"], digest)
    elif not before["loaded"]:
        after = job.bootstrap(params["plist"], digest)
    elif before["state"] != "running":
        module.warn(
            f"{job.target} is loaded but {before['state']} (last exit code "
            f"{before['last_exit_code']}); its plist is unchanged, so it is left to launchd."
        )

    module.exit_json(
        changed=job.changed,
        domain=job.domain,
        label=params["label"],
        state=after["state"],
        pid=after["pid"],
        plist_sha256=digest,
        commands=job.commands,
        diff=dict(
            before={"loaded": before["loaded"], "plist_sha256": recorded},
            after={"loaded": after["loaded"], "plist_sha256": digest},
        ),
    )


if __name__ == "__main__":
    main()
