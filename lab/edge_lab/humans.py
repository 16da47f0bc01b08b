"""The steps only a person can do on a Mac, played on a lab host.

Each writes the host's state file and leaves the traces macOS would: TCC rows, the owner of
``~/Library/Messages``, ``chat.db``. Every check runs before anything is written, so a command
refused for bad input changes nothing.
"""

import importlib
import os
import re
from pathlib import Path

from . import hosts, hoststate, tcc
from .layout import BadInput, LabError, host_by_name, known_hosts

PHONE = re.compile(r"^\+[1-9][0-9]{7,14}$")
STAFF_GID = 20
WHEEL_GID = 0


def _module(name, purpose):
    """Import a part of the lab built separately; say plainly when it is not there."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name != name:
            raise
        raise LabError(f"{name} is not installed, so {purpose} is not possible yet") from None


def _user(host, short_name):
    users = hosts.host_passwd(host)
    if short_name not in users:
        raise LabError(
            f"unknown user '{short_name}' on {host.name}; create it first (sysadminctl -addUser)"
        )
    uid, gid, home = users[short_name]
    return uid, gid, host.dir / home.lstrip("/")


def _phone(number):
    if not PHONE.match(number):
        raise LabError(f"phone number '{number}' is not E.164 (+ and 8 to 15 digits)")
    return number


def _handle(handle):
    """An iMessage handle: a phone number or an email address."""
    if handle.startswith("+"):
        return _phone(handle)
    if not re.match(r"^[^@\s]+@[^@\s]+\.[^@\s]+$", handle):
        raise LabError(f"handle '{handle}' is neither an E.164 phone number nor an email address")
    return handle


# ---------------------------------------------------------------- GUI login


def gui(action, host_name, short_name):
    host = host_by_name(host_name)
    uid, _, _ = _user(host, short_name)

    # A running host's launchd opens or closes the gui/<uid> domain (and records it in the
    # state); a stopped host only remembers the session for its next start.
    if hosts.is_running(host):
        launchd = _module("edge_lab.launchd", "a GUI login")
        try:
            answer = launchd.request(str(host.launchd_socket), f"gui_{action}", uid=uid)
        except ConnectionError as error:
            raise LabError(str(error)) from None
        if answer.get("status", 0) != 0:
            raise LabError(
                f"launchd on {host.name} refused the GUI {action} of {short_name}: "
                f"{answer.get('err', 'no reason given')}"
            )

    def change(state):
        sessions = [session for session in state["gui_sessions"] if session != uid]
        state["gui_sessions"] = sessions + [uid] if action == "login" else sessions

    hoststate.update(host.dir, change)
    print(
        f"{host.name}: {short_name} (uid {uid}) logged {'in' if action == 'login' else 'out'}"
        " at the GUI"
    )


# ---------------------------------------------------------------- iMessage


def _messages_owner(fda, uid):
    # Without Full Disk Access the relay must not read chat.db: macOS hides the folder.
    return (uid, STAFF_GID) if fda else (0, WHEEL_GID)


def _apply_messages_owner(messages, fda, uid):
    owner, group = _messages_owner(fda, uid)
    os.chown(messages, owner, group)
    os.chmod(messages, 0o700)


def imessage_signin(host_name, short_name, phone):
    host = host_by_name(host_name)
    uid, gid, home = _user(host, short_name)
    _phone(phone)
    if not (home / "Library").is_dir():
        raise LabError(
            f"{short_name} on {host.name} has no home folder yet; run createhomedir "
            "for the user first"
        )
    for other in known_hosts(host.lab):
        for signed_in, number in hoststate.load(other.dir)["imessage"].items():
            if number == phone and (other, signed_in) != (host, short_name):
                raise LabError(f"{phone} is already signed in as {signed_in} on {other.name}")
    messages_lib = _module("edge_lab.messages", "an iMessage sign-in")

    def sign_in(state):
        state["imessage"][short_name] = phone

    state = hoststate.update(host.dir, sign_in)
    messages = home / "Library/Messages"
    messages.mkdir(exist_ok=True)
    chat_db = messages / "chat.db"
    if not chat_db.exists():
        messages_lib.create_chat_db(str(chat_db), uid, gid)
    _apply_messages_owner(messages, state["fda"], uid)
    print(f"{host.name}: {short_name} signed in to iMessage as {phone}")


# ---------------------------------------------------------------- privacy grants


def fda(action, host_name):
    host = host_by_name(host_name)
    granted = action == "grant"
    tcc.ensure_db(host.dir / tcc.SYSTEM_DB)
    hoststate.update(host.dir, lambda state: {**state, "fda": granted})
    tcc.set_access(
        host.dir / tcc.SYSTEM_DB,
        service=tcc.FULL_DISK_ACCESS,
        client=tcc.RELAY_CLIENT,
        client_type=tcc.CLIENT_TYPE_PATH,
        allowed=granted,
        reason=tcc.REASON_USER_SET,
    )
    for uid, _, home in hosts.host_passwd(host).values():
        messages = host.dir / home.lstrip("/") / "Library/Messages"
        if home.startswith("/Users/") and messages.is_dir():
            _apply_messages_owner(messages, granted, uid)
    print(
        f"{host.name}: Full Disk Access {'granted' if granted else 'revoked'} for "
        f"{tcc.RELAY_CLIENT}"
    )


def automation(action, host_name, short_name):
    host = host_by_name(host_name)
    uid, gid, home = _user(host, short_name)
    if not (home / "Library").is_dir():
        raise LabError(
            f"{short_name} on {host.name} has no home folder yet; run createhomedir "
            "for the user first"
        )
    granted = action == "grant"

    def change(state):
        others = [name for name in state["automation"] if name != short_name]
        state["automation"] = others + [short_name] if granted else others

    database = home / tcc.USER_DB
    tcc.ensure_db(database, uid, gid, dir_mode=0o700)
    hoststate.update(host.dir, change)
    tcc.set_access(
        database,
        service=tcc.APPLE_EVENTS,
        client=tcc.RELAY_CLIENT,
        client_type=tcc.CLIENT_TYPE_PATH,
        allowed=granted,
        reason=tcc.REASON_USER_CONSENT,
        indirect_object=tcc.MESSAGES_BUNDLE_ID,
    )
    print(
        f"{host.name}: Automation of Messages {'granted' if granted else 'revoked'} for "
        f"{short_name}"
    )


# ---------------------------------------------------------------- Command Line Tools


def clt(action, host_name):
    host = host_by_name(host_name)
    installed = action == "install"
    hoststate.update(host.dir, lambda state: {**state, "clt": installed})
    hosts.set_clt(host, installed)
    print(f"{host.name}: Command Line Tools {'installed' if installed else 'removed'}")


# ---------------------------------------------------------------- the phone network


def _signed_in(phone):
    """The lab account signed in to iMessage as ``phone``: (host, short name, chat.db), or None."""
    for host in known_hosts():
        for short_name, number in hoststate.load(host.dir)["imessage"].items():
            if number == phone:
                _, _, home = _user(host, short_name)
                return host, short_name, home / "Library/Messages/chat.db"
    return None


def _nobody_signed_in(phone):
    return f"no lab account is signed in to iMessage as {phone}; run edge-lab imessage signin first"


def phone_send(to, sender, text, attributed_body_file=None):
    _phone(to)
    _handle(sender)
    body = None
    if attributed_body_file is not None:
        path = Path(attributed_body_file)
        if not path.is_file():
            raise LabError(f"attributed body file '{path}' does not exist")
        body = path.read_bytes()
    account = _signed_in(to)
    if account is None:
        raise LabError(_nobody_signed_in(to))
    host, short_name, chat_db = account
    messages_lib = _module("edge_lab.messages", "delivering a message")
    guid = messages_lib.add_incoming(
        str(chat_db), sender=sender, text=text, account_phone=to, attributed_body=body
    )
    print(f"delivered to {short_name} on {host.name}: {guid}")
    return guid


def _plural(count, noun):
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def phone_replay(to, source_db, *, limit=None, since_rowid=0, now=False):
    """Copies the message rows of another chat.db into the account signed in as ``to``."""
    try:
        _phone(to)
    except LabError as error:
        raise BadInput(str(error)) from None
    account = _signed_in(to)
    if account is None:
        raise BadInput(_nobody_signed_in(to))
    host, short_name, chat_db = account
    replay_lib = _module("edge_lab.replay", "replaying messages")
    done = replay_lib.replay(chat_db, source_db, since_rowid=since_rowid, limit=limit, now=now)

    print(
        f"replayed into {short_name} on {host.name}: {_plural(done.rows, 'row')}, "
        f"{_plural(done.chats, 'chat')}, {_plural(done.handles, 'handle')}, "
        f"{_plural(done.attachments, 'attachment')} added "
        f"({_plural(done.files, 'attachment file')} copied)"
    )
    if done.skipped:
        print(f"skipped, guid already in chat.db: {', '.join(done.skipped)}")
    if done.last_rowid:
        last = done.last_rowid
        print(f"read source rows up to ROWID {last} (to go on: --since-rowid {last})")
    else:
        print(f"no source rows above ROWID {since_rowid}")
    return done
