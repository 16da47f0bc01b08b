"""plutil stand-in: lint, convert and print XML and binary property lists."""

import datetime
import json
import plistlib

import pytest
from standins_support import run_standin, standin_root

JOB = {
    "Label": "com.archety.edge.relay.sage-01",
    "ProgramArguments": ["/Users/edge_sage_01/bin/edge-relay", "run"],
    "KeepAlive": True,
    "RunAtLoad": False,
    "ThrottleInterval": 10,
}


@pytest.fixture
def host_root():
    with standin_root() as root:
        yield root


def plutil(root, *args, **kwargs):
    return run_standin(root, "plutil", *args, **kwargs)


def write_plist(path, value, fmt=plistlib.FMT_XML):
    path.write_bytes(plistlib.dumps(value, fmt=fmt))
    return str(path)


def test_lint_ok_for_xml_and_binary(host_root):
    xml = write_plist(host_root / "job.plist", JOB)
    binary = write_plist(host_root / "job.bin.plist", JOB, plistlib.FMT_BINARY)
    result = plutil(host_root, "-lint", xml, binary)
    assert result.returncode == 0
    assert result.stdout == f"{xml}: OK\n{binary}: OK\n"
    assert plutil(host_root, xml).stdout == f"{xml}: OK\n"
    silent = plutil(host_root, "-lint", "-s", xml)
    assert (silent.returncode, silent.stdout) == (0, "")


def test_lint_reports_each_bad_file_and_exits_1(host_root):
    good = write_plist(host_root / "good.plist", JOB)
    broken = host_root / "broken.plist"
    broken.write_text('<?xml version="1.0"?><plist version="1.0"><dict><key>Label</key>')
    missing = str(host_root / "missing.plist")
    result = plutil(host_root, "-lint", good, str(broken), missing)
    assert result.returncode == 1
    assert result.stdout == f"{good}: OK\n"
    errors = result.stderr.splitlines()
    assert errors[0].startswith(f"{broken}: ") and len(errors[0]) > len(f"{broken}: ")
    assert errors[1] == (
        f"{missing}: file does not exist or is not readable or is not a regular file"
    )


def test_lint_reads_stdin(host_root):
    result = plutil(host_root, "-lint", "-", stdin=plistlib.dumps(JOB).decode())
    assert (result.returncode, result.stdout) == (0, "-: OK\n")


def test_convert_in_place_between_formats(host_root):
    path = host_root / "job.plist"
    write_plist(path, JOB)
    path.chmod(0o644)
    assert plutil(host_root, "-convert", "binary1", str(path)).returncode == 0
    assert path.read_bytes().startswith(b"bplist00")
    assert plistlib.loads(path.read_bytes()) == JOB
    assert path.stat().st_mode & 0o777 == 0o644
    assert plutil(host_root, "-convert", "xml1", str(path)).returncode == 0
    assert path.read_bytes().startswith(b'<?xml version="1.0" encoding="UTF-8"?>')


def test_convert_to_json_on_stdout(host_root):
    path = write_plist(host_root / "job.plist", JOB)
    compact = plutil(host_root, "-convert", "json", "-o", "-", path)
    assert compact.returncode == 0
    assert json.loads(compact.stdout) == JOB and "\n" not in compact.stdout
    readable = plutil(host_root, "-convert", "json", "-r", "-o", "-", path)
    assert '  "ThrottleInterval" : 10' in readable.stdout.splitlines()


def test_convert_to_another_file_and_json_refuses_dates(host_root):
    dated = write_plist(host_root / "dated.plist", {"when": datetime.datetime(2024, 5, 1)})
    out = host_root / "out.json"
    result = plutil(host_root, "-convert", "json", "-o", str(out), dated)
    assert result.returncode == 1
    assert result.stderr == f"{dated}: invalid object in plist for destination format\n"
    assert not out.exists()
    assert plutil(host_root, "-convert", "xml1", "-o", str(out), dated).returncode == 0
    assert plistlib.loads(out.read_bytes()) == {"when": datetime.datetime(2024, 5, 1)}


def test_print_for_people(host_root):
    value = dict(JOB, Data=b"\x01\x02", When=datetime.datetime(2024, 5, 1, 10, 0), Empty={})
    path = write_plist(host_root / "job.plist", value, plistlib.FMT_BINARY)
    result = plutil(host_root, "-p", path)
    assert result.returncode == 0
    assert result.stdout == (
        "{\n"
        '  "Data" => {length = 2, bytes = 0x0102}\n'
        '  "Empty" => {\n'
        "  }\n"
        '  "KeepAlive" => true\n'
        '  "Label" => "com.archety.edge.relay.sage-01"\n'
        '  "ProgramArguments" => [\n'
        '    0 => "/Users/edge_sage_01/bin/edge-relay"\n'
        '    1 => "run"\n'
        "  ]\n"
        '  "RunAtLoad" => false\n'
        '  "ThrottleInterval" => 10\n'
        '  "When" => 2024-05-01 10:00:00 +0000\n'
        "}\n"
    )


def test_usage_errors(host_root):
    path = write_plist(host_root / "job.plist", JOB)
    for args in (["-extract", "Label", "raw", path], ["-convert", "yaml", path], []):
        result = plutil(host_root, *args)
        assert result.returncode == 1, args
        assert "plutil: [command_option]" in result.stderr
    assert plistlib.loads((host_root / "job.plist").read_bytes()) == JOB
