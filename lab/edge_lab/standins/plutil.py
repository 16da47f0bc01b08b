"""``plutil``: the lab's stand-in for macOS's property list utility.

The subset the collection uses::

    plutil [-lint] [-s] FILE ...                     check syntax (the default command)
    plutil -convert xml1|binary1|json [-r] [-o OUT | -e EXT] FILE ...
    plutil -p FILE                                   print for people

XML and binary property lists are read and written with Python's plistlib; ``-`` as a
file reads standard input, ``-o -`` writes to standard output. The old OpenStep text
format is not read (plistlib has no parser for it); such a file fails the lint.

Facts kept from plutil(1): ``-lint`` prints ``FILE: OK`` for each good file (nothing with
``-s``) and ``FILE: <reason>`` for a bad one; the exit status is 0 on success and 1 on any
failure. ``-convert`` writes the file back in the new format, or to ``-o``; JSON refuses
dates and data (``invalid object in plist for destination format``); ``-r`` indents JSON.
``-p`` prints dictionaries (keys sorted), arrays (indexed ``0 =>``), strings quoted,
booleans ``true``/``false``, data as ``{length = N, bytes = 0x...}`` and dates in UTC.
"""

import datetime
import json
import os
import plistlib
import sys
import tempfile
from pathlib import Path
from typing import List, Optional

from edge_lab.standins._common import StandinError, run

USAGE = """\
plutil: [command_option] [other_options] file...
The file '-' means stdin
Command options are (-lint is the default):
 -help                         show this message and exit
 -lint                         check the property list files for syntax errors
 -convert fmt                  rewrite property list files in format
                               fmt is one of: xml1 binary1 json
 -p                            print property list in a human-readable fashion
Other options:
 -r                            if writing JSON, output in human-readable form
 -s                            be silent on success
 -o path                       specify alternate file path name for result;
                               the -o option is used with -convert, and is only
                               useful with one file argument (last file overwrites);
                               the path '-' means stdout
 -e extension                  specify alternate extension for converted files
 --                            specifies that all further arguments are file names"""

NOT_READABLE = "file does not exist or is not readable or is not a regular file"


class PlistError(Exception):
    """A file that is not a property list; the message is the reason plutil prints."""


def read_bytes(name: str) -> bytes:
    if name == "-":
        return sys.stdin.buffer.read()
    path = Path(name)
    if not path.is_file():
        raise PlistError(NOT_READABLE)
    try:
        return path.read_bytes()
    except OSError as err:
        raise PlistError(NOT_READABLE) from err


def load(name: str):
    data = read_bytes(name)
    if not data.strip():
        raise PlistError("Encountered unexpected EOF: the file is empty")
    try:
        return plistlib.loads(data)
    except plistlib.InvalidFileException as err:
        raise PlistError(f"{err}: not an XML or binary property list") from err
    except Exception as err:  # expat and plistlib raise several types for broken input
        raise PlistError(f"Property List error: {err}") from err


def lint(files: List[str], silent: bool) -> int:
    status = 0
    for name in files:
        try:
            load(name)
        except PlistError as err:
            print(f"{name}: {err}", file=sys.stderr)
            status = 1
            continue
        if not silent:
            print(f"{name}: OK")
    return status


def _json_ready(value) -> bool:
    if isinstance(value, dict):
        return all(_json_ready(v) for v in value.values())
    if isinstance(value, list):
        return all(_json_ready(v) for v in value)
    return isinstance(value, (str, int, float, bool))


def encode(value, fmt: str, readable: bool) -> bytes:
    if fmt == "xml1":
        return plistlib.dumps(value, fmt=plistlib.FMT_XML)
    if fmt == "binary1":
        return plistlib.dumps(value, fmt=plistlib.FMT_BINARY)
    if not _json_ready(value):
        raise PlistError("invalid object in plist for destination format")
    if readable:
        # NSJSONSerialization's pretty form: two-space indent and " : " between key and value.
        return json.dumps(value, indent=2, separators=(",", " : "), ensure_ascii=False).encode()
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def write_file(path: Path, data: bytes) -> None:
    mode = path.stat().st_mode & 0o7777 if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def convert(files, fmt, output, extension, readable) -> int:
    if fmt not in ("xml1", "binary1", "json"):
        raise StandinError(f"Unknown format specifier: {fmt}\n{USAGE}", 1)
    status = 0
    for name in files:
        try:
            data = encode(load(name), fmt, readable)
        except PlistError as err:
            print(f"{name}: {err}", file=sys.stderr)
            status = 1
            continue
        if output == "-" or (output is None and name == "-"):
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
            continue
        target = Path(output) if output else Path(name)
        if extension and not output:
            target = target.with_suffix("." + extension.lstrip("."))
        try:
            write_file(target, data)
        except OSError as err:
            print(f"{name}: could not write {target}: {err.strerror}", file=sys.stderr)
            status = 1
    return status


def describe(value, indent: int = 0) -> str:
    pad = "  " * indent
    if isinstance(value, dict):
        if not value:
            return "{\n" + pad + "}"
        lines = [f'{pad}  "{key}" => {describe(value[key], indent + 1)}' for key in sorted(value)]
        return "{\n" + "\n".join(lines) + "\n" + pad + "}"
    if isinstance(value, list):
        if not value:
            return "[\n" + pad + "]"
        lines = [f"{pad}  {i} => {describe(item, indent + 1)}" for i, item in enumerate(value)]
        return "[\n" + "\n".join(lines) + "\n" + pad + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, bytes):
        shown = value.hex() if len(value) <= 24 else f"{value[:8].hex()} ... {value[-8:].hex()}"
        return f"{{length = {len(value)}, bytes = 0x{shown}}}"
    if isinstance(value, datetime.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(datetime.timezone.utc).replace(tzinfo=None)
        return value.strftime("%Y-%m-%d %H:%M:%S +0000")
    if isinstance(value, plistlib.UID):
        return f"<CFKeyedArchiverUID>{{value = {value.data}}}"
    return f'"{value}"'


def print_plist(files: List[str]) -> int:
    status = 0
    for name in files:
        try:
            print(describe(load(name)))
        except PlistError as err:
            print(f"{name}: {err}", file=sys.stderr)
            status = 1
    return status


def _main(args: List[str]) -> int:
    command = "-lint"
    fmt = output = extension = None
    readable = silent = False
    files: List[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            files.extend(args[i + 1 :])
            break
        if arg in ("-help", "-h"):
            print(USAGE)
            return 0
        if arg in ("-lint", "-p"):
            command = arg
        elif arg == "-convert":
            if i + 1 >= len(args):
                raise StandinError(f"Missing format specifier for command.\n{USAGE}", 1)
            command, fmt = arg, args[i + 1]
            i += 1
        elif arg in ("-o", "-e"):
            if i + 1 >= len(args):
                raise StandinError(f"Missing argument for {arg}.\n{USAGE}", 1)
            if arg == "-o":
                output = args[i + 1]
            else:
                extension = args[i + 1]
            i += 1
        elif arg == "-r":
            readable = True
        elif arg == "-s":
            silent = True
        elif arg.startswith("-") and arg != "-":
            raise StandinError(f"unrecognized option: {arg}\n{USAGE}", 1)
        else:
            files.append(arg)
        i += 1
    if not files:
        raise StandinError(f"No files specified.\n{USAGE}", 1)
    if command == "-lint":
        return lint(files, silent)
    if command == "-p":
        return print_plist(files)
    return convert(files, fmt, output, extension, readable)


def main(argv: Optional[List[str]] = None) -> int:
    return run(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
