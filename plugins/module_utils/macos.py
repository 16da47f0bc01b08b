# Copyright: archety.edge contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Reading macOS's own command-line tools, shared by the modules that run on a Mac.

Runs on the Mac under macOS's Python 3.9: standard library and Ansible's module_utils only.
"""

import re
import shlex

# dscl exits with this status, and names eDSRecordNotFound on stderr, for a missing record.
DSCL_RECORD_NOT_FOUND = 56
# Foundation's NSLog prefix, which sysadminctl puts on every line it logs to stderr:
# "2026-12-03 12:00:00.000 sysadminctl[4242:91234] ".
NSLOG_PREFIX = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+ [^\s\[]+\[\d+:[0-9a-fA-F]+\] ")
# What macOS's directory tools say when the caller is not root, and what to do then.
NOT_ROOT_MARKERS = ("eDSPermissionError", "must be run as root", "Operation not permitted")
HINTS = (
    (NOT_ROOT_MARKERS, "Run the task as root (become: true)."),
    (("already in use",), "Give a free uid, or leave uid out and macOS picks one."),
    (
        ("eDSRecordAlreadyExists",),
        "Another user of that name appeared meanwhile: run the task again to judge it.",
    ),
)


def command_line(argv):
    """The command as a person would type it: what the modules report in ``commands``."""
    return " ".join(shlex.quote(str(part)) for part in argv)


def output_of(out, err):
    """The most telling text a failed command printed, on one line."""
    text = (err or "").strip() or (out or "").strip() or "no output"
    return " ".join(text.split())


def sentence(text):
    """``text`` ending as a sentence does, for messages that quote a tool's own words."""
    return text if text.endswith((".", "!", "?")) else text + "."


def nslog_messages(text):
    """The messages of NSLog lines, without their date and process, one per line."""
    return [
        NSLOG_PREFIX.sub("", line).strip() for line in (text or "").splitlines() if line.strip()
    ]


def sysadminctl_said(out, err):
    """What sysadminctl said went wrong: its error lines, or else its last line.

    sysadminctl exits 0 when a step fails and logs the failure among its progress lines,
    so the error lines are what explains a user that was not made or not deleted.
    """
    messages = nslog_messages(err) + nslog_messages(out)
    errors = [message for message in messages if "error" in message.lower()]
    return " ".join(errors or messages[-1:]) or "no output"


def hint(text):
    """The advice for a failure macOS's tools describe in ``text``, or an empty string."""
    for markers, advice in HINTS:
        if any(marker in text for marker in markers):
            return " " + advice
    return ""


def parse_dscl_record(text):
    """Parse ``dscl . -read`` output into {attribute: [values]}.

    dscl prints ``Key: v1 v2`` for plain values, and ``Key:`` followed by lines starting
    with a space when a value holds spaces (RealName) or spans lines (plists). Native
    attributes carry their own colon (``dsAttrTypeNative:IsHidden: 1``); the key is
    everything before the last ``: `` that precedes the values.
    """
    record = {}
    key = None
    for line in text.splitlines():
        if not line.strip():
            continue
        if line[0] in " \t":
            if key is not None:
                record[key].append(line.strip())
            continue
        if line.endswith(":"):
            key, rest = line[:-1], ""
        elif ": " in line:
            key, rest = line.split(": ", 1)
            # "dsAttrTypeNative:_writers_passwd: name" splits at the first ": " already;
            # a value never holds ": " on the key line, continuation lines carry those.
        else:
            key = None
            continue
        if key.startswith("dsAttrTypeNative:"):
            key = key[len("dsAttrTypeNative:") :]
        record[key] = rest.split() if rest else []
    return record


def first(record, key, default=None):
    values = record.get(key) or []
    return values[0] if values else default


def joined(record, key, default=None):
    values = record.get(key) or []
    return " ".join(values) if values else default


def read_user_record(module, dscl, name):
    """The user's directory record as {attribute: [values]}, or None when there is none."""
    rc, out, err = module.run_command([dscl, ".", "-read", f"/Users/{name}"])
    if rc == 0:
        return parse_dscl_record(out)
    if rc == DSCL_RECORD_NOT_FOUND or "eDSRecordNotFound" in (err or "") + (out or ""):
        return None
    said = output_of(out, err)
    module.fail_json(
        msg=f"dscl could not read the user record /Users/{name} (exit {rc}): {sentence(said)}"
        + (
            hint(said)
            or " Check that the module runs as root on a Mac with a working directory service."
        )
    )
    return None


def user_facts(record, name):
    """The parts of a user record the collection cares about, in plain types."""
    uid = first(record, "UniqueID")
    gid = first(record, "PrimaryGroupID")
    return {
        "name": name,
        "uid": int(uid) if uid is not None and uid.lstrip("-").isdigit() else None,
        "gid": int(gid) if gid is not None and gid.lstrip("-").isdigit() else None,
        "full_name": joined(record, "RealName", ""),
        "home": first(record, "NFSHomeDirectory"),
        "shell": first(record, "UserShell"),
        "hidden": first(record, "IsHidden", "0") in ("1", "YES", "yes", "true"),
    }
