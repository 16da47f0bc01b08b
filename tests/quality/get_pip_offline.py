"""Stands in for pip's get-pip.py when ansible-test cannot download it.

ansible-test runs it inside a fresh virtual environment with get-pip.py's arguments (pip's
install options, the packages, and get-pip's own --no-setuptools and --no-wheel). pip comes
from the standard library's ensurepip, whose version serves ansible-test as well as the one it
asks for; any other requested package is then installed with it.
"""

import ensurepip
import subprocess
import sys

GET_PIP_ONLY = ("--no-setuptools", "--no-wheel")


def main():
    ensurepip.bootstrap(upgrade=True)
    args = [arg for arg in sys.argv[1:] if arg not in GET_PIP_ONLY]
    packages = [arg for arg in args if not arg.startswith("-") and not arg.startswith("pip")]
    if not packages:
        return 0
    options = [arg for arg in args if arg.startswith("-")]
    return subprocess.call([sys.executable, "-m", "pip", "install", *options, *packages])


if __name__ == "__main__":
    sys.exit(main())
