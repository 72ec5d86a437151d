"""pytest setup of the VM tier: the ``vm`` marker, the import path and the session ``image`` fixture.

Select or deselect the tier from the main suite with ``-m vm`` /
``-m "not vm"``.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import pytest

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)


import build_image  # noqa: E402 - found through the path set above
import run_vm  # noqa: E402
from vm_testlib import unavailable  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "vm: boots a real kernel under QEMU (slow: about 2 minutes)")
    run_vm.end_on_sigterm()


def _image(variant: build_image.Variant) -> build_image.Image:
    """The cached image of `variant` (built when needed); skips where QEMU or
    debootstrap is missing, or where it must be built and the user is not root."""
    option = "" if variant == build_image.BASE else f" --variant {variant.name}"
    missing = [t for t in ("qemu-system-x86_64", "debootstrap") if shutil.which(t) is None]
    if missing:
        unavailable(
            "VM tier needs "
            + ", ".join(missing)
            + ": apt-get install -y qemu-system-x86 debootstrap"
            + f" (or run python3 tests/vm/build_image.py{option} as root)"
        )
    cached = build_image.load_image(build_image.image_dir(build_image.cache_key(variant), variant))
    if cached is None and os.geteuid() != 0:
        unavailable("VM tier: building the image needs root (debootstrap)")
    t0 = time.monotonic()
    img, built = build_image.get_image(variant=variant)
    print(f"VM image{option} {'built' if built else 'reused'} in {time.monotonic() - t0:.1f} s: {img.directory}")
    return img


@pytest.fixture(scope="session")
def image() -> build_image.Image:
    return _image(build_image.BASE)


@pytest.fixture(scope="session")
def systemd_image() -> build_image.Image:
    """The systemd + sshd variant (ssh_vm.py, Molecule)."""
    return _image(build_image.SYSTEMD)
