"""Offline stand-in for the get-pip bootstrap script ansible-test downloads.

ansible-test runs ``get_pip_<version>.py [pip options] pip==X ...`` in a fresh
venv; the real script comes from a host these machines cannot reach. This one
installs the venv's bundled pip (``ensurepip``), then runs ``pip install``
with the same arguments from the reachable package index. ``--no-setuptools``
and ``--no-wheel`` are get-pip's own options, which pip does not know.
"""

from __future__ import annotations

import subprocess
import sys

GET_PIP_ONLY = {"--no-setuptools", "--no-wheel"}


def main() -> int:
    subprocess.run([sys.executable, "-m", "ensurepip", "--upgrade"], check=True, stdout=subprocess.DEVNULL)
    arguments = [a for a in sys.argv[1:] if a not in GET_PIP_ONLY]
    return subprocess.run([sys.executable, "-m", "pip", "install", *arguments], check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
