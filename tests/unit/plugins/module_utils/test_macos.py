"""module_utils.macos: reading what macOS's directory tools print, and explaining their failures."""

from ansible_collections.archety.edge.plugins.module_utils import macos

# dscl . -read as macOS 14 prints it, with the oddities a parser meets: a blank line, a value
# line before any key, and a line that is neither a key nor a value.
DSCL_READ = """\
 stray continuation before any key

dsAttrTypeNative:IsHidden: 1
NFSHomeDirectory: /Users/edge_sage_01
Picture:
 /Library/User Pictures/Animals/Eagle.heic
RealName:
 Edge sage-01
garbage without a colon
 value of no key
UniqueID: 502
"""


def test_dscl_record_keeps_values_and_skips_what_is_not_an_attribute():
    record = macos.parse_dscl_record(DSCL_READ)
    assert record == {
        "IsHidden": ["1"],
        "NFSHomeDirectory": ["/Users/edge_sage_01"],
        "Picture": ["/Library/User Pictures/Animals/Eagle.heic"],
        "RealName": ["Edge sage-01"],
        "UniqueID": ["502"],
    }
    facts = macos.user_facts(record, "edge_sage_01")
    assert facts["uid"] == 502 and facts["gid"] is None and facts["hidden"] is True
    assert facts["full_name"] == "Edge sage-01" and facts["shell"] is None


def test_sysadminctl_errors_without_nslog_prefixes():
    err = (
        "2026-12-03 12:00:00.000 sysadminctl[4242:91234] Creating user record…\n"
        "2026-12-03 12:00:00.001 sysadminctl[4242:1a2b] ### Error:-14120 (eDSPermissionError)\n"
    )
    assert macos.sysadminctl_said("", err) == "### Error:-14120 (eDSPermissionError)"
    last = "2026-12-03 12:00:00.000 sysadminctl[4242:91234] Deleting record for edge_sage_01\n"
    assert macos.sysadminctl_said("", last) == "Deleting record for edge_sage_01"
    assert macos.sysadminctl_said("", "") == "no output"


def test_hints_for_the_failures_macos_tools_describe():
    assert macos.hint("DS Error: -14120 (eDSPermissionError)") == (
        " Run the task as root (become: true)."
    )
    assert macos.hint("UID 501 is already in use by admin.") == (
        " Give a free uid, or leave uid out and macOS picks one."
    )
    assert "run the task again" in macos.hint("eDSRecordAlreadyExists")
    assert macos.hint("something else") == ""


def test_sentences_end_once():
    assert macos.sentence("done") == "done."
    assert macos.sentence("done.") == "done."
    assert macos.sentence("really?") == "really?"
