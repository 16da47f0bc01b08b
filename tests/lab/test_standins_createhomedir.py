"""createhomedir stand-in: a home folder copied from the user template, macOS's modes."""

import os
import stat

import pytest
from standins_support import run_standin, standin_root


@pytest.fixture
def host_root():
    with standin_root() as root:
        yield root


def createhomedir(root, *args, **kwargs):
    return run_standin(root, "createhomedir", *args, **kwargs)


def mode(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_creates_the_home_from_the_template(host_root):
    result = createhomedir(host_root, "-c", "-u", "admin")
    assert result.returncode == 0, result.stderr
    assert result.stdout == 'created "/Users/admin"\n'
    home = host_root / "Users" / "admin"
    assert mode(home) == 0o750
    for folder in ("Desktop", "Documents", "Downloads", "Library", "Movies", "Music", "Pictures"):
        assert mode(home / folder) == 0o700, folder
    assert mode(home / "Public") == 0o755
    assert mode(home / "Public" / "Drop Box") == 0o733
    assert (home / "Library" / "Application Support").is_dir()
    for dirpath, dirnames, filenames in os.walk(home):
        for name in [dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)]:
            st = os.lstat(name)
            assert (st.st_uid, st.st_gid) == (501, 20), name


def test_template_files_are_copied(host_root):
    template = host_root / "System/Library/User Template/English.lproj"
    (template / "Library" / "Preferences" / "com.example.plist").write_text("<plist/>")
    createhomedir(host_root, "-c", "-u", "admin")
    copied = host_root / "Users/admin/Library/Preferences/com.example.plist"
    assert copied.read_text() == "<plist/>"


def test_an_existing_home_is_left_as_it_is(host_root):
    createhomedir(host_root, "-c", "-u", "admin")
    marker = host_root / "Users" / "admin" / "Documents" / "notes.txt"
    marker.write_text("kept")
    os.chmod(host_root / "Users" / "admin", 0o755)
    again = createhomedir(host_root, "-c", "-u", "admin")
    assert again.returncode == 0 and again.stdout == ""
    assert marker.read_text() == "kept"
    assert mode(host_root / "Users" / "admin") == 0o755


def test_all_local_users_with_c_alone(host_root):
    result = createhomedir(host_root, "-c")
    assert result.stdout == 'created "/Users/admin"\n'
    assert not (host_root / "var" / "empty").exists()


def test_a_user_without_record_is_an_error(host_root):
    result = createhomedir(host_root, "-c", "-u", "edge_sage_09")
    assert result.returncode == 1
    assert "edge_sage_09 not found" in result.stderr
    assert not (host_root / "Users" / "edge_sage_09").exists()


def test_a_missing_template_is_an_error(host_root):
    template = host_root / "System/Library/User Template/English.lproj"
    os.rename(template, template.with_name("moved"))
    result = createhomedir(host_root, "-c", "-u", "admin")
    assert result.returncode == 1 and "user template" in result.stderr
    assert not (host_root / "Users" / "admin").exists()


def test_usage_and_root_only(host_root):
    assert createhomedir(host_root, "-u", "admin").returncode == 1
    assert createhomedir(host_root, "-c", "-x").returncode == 1
    result = createhomedir(host_root, "-c", "-u", "admin", as_nobody=True)
    assert result.returncode == 1 and "must be run as root" in result.stderr
    assert not (host_root / "Users" / "admin").exists()
