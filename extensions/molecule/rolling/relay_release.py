"""Build relay wheels of other versions for the deploy scenarios, from a copy of files/relay.

    python relay_release.py OUT_DIR VERSION [--bad]

The copy gets VERSION in edge_relay/__init__.py (the wheel's version comes from there). With
--bad, the copy's relay starts, answers /health and stays critical there: a release that
installs fine but must not pass the health gate. Prints the wheel's path.
"""

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

RELAY = Path(__file__).resolve().parents[3] / "files/relay"
# Appended to the copy's health module: every report says a check failed.
BAD_HEALTH = """

_judged_overall = overall


def overall(checks, queue_status):  # noqa: F811  (the bad release's whole point)
    checks["release"] = {"ok": False, "detail": "this release is broken on purpose"}
    return _judged_overall(checks, queue_status)
"""


def build(out_dir, version, bad):
    with tempfile.TemporaryDirectory(prefix="edge-relay-release.") as work:
        source = Path(work) / "relay"
        shutil.copytree(RELAY, source, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        init = source / "src/edge_relay/__init__.py"
        text, count = re.subn(
            r'^__version__ = ".*"$', f'__version__ = "{version}"', init.read_text(), flags=re.M
        )
        if count != 1:
            sys.exit(f"no __version__ line in {init}: cannot bump the copy")
        init.write_text(text)
        if bad:
            health = source / "src/edge_relay/health.py"
            health.write_text(health.read_text() + BAD_HEALTH)
        out_dir.mkdir(parents=True, exist_ok=True)
        for old in out_dir.glob(f"edge_relay-{version}-*.whl"):
            old.unlink()
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps"]
            + ["--no-build-isolation", "--wheel-dir", str(out_dir), str(source)],
            check=True,
        )
    return next(out_dir.glob(f"edge_relay-{version}-*.whl"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("version")
    parser.add_argument("--bad", action="store_true", help="a release whose /health stays critical")
    args = parser.parse_args()
    print(build(args.out_dir, args.version, args.bad))


if __name__ == "__main__":
    main()
