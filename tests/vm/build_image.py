#!/usr/bin/env python3
"""Build (or reuse) the Basalt test VM image from Debian's packages.

The image is made at test time, never committed or downloaded prebuilt:

* ``debootstrap --variant=minbase`` of Debian bookworm with the storage tools
  (LVM, thin-provisioning-tools, LIO's rtslib/targetcli, open-iscsi, udev, ...);
* the stock ``linux-image-amd64`` kernel: its ``.deb`` is fetched from the same
  mirror (checked against the SHA-256 in the Packages index that debootstrap
  verified), unpacked with ``dpkg-deb -x``; its modules go into the root and
  ``depmod`` indexes them;
* a tiny busybox initramfs that loads virtio/ext4 and switches to the root;
* ``mkfs.ext4 -d ROOTDIR`` makes the root disk image without loop mounts.

Everything lands in a cache outside the repository (``/var/cache/basalt-vm``,
or ``$BASALT_VM_CACHE``) under a key that hashes the package list, this script
and the files it bakes into the image; a build is skipped when that key is
already there.  Usage: ``python3 tests/vm/build_image.py [--force] [--variant systemd]``.

The ``systemd`` variant (for Molecule over SSH, see ssh_vm.py) adds systemd as
PID 1 and sshd; it has its own key and cache directory, and its files live in
``image/systemd/`` so that editing them never rebuilds the base image.
"""

from __future__ import annotations

import argparse
import fcntl
import functools
import gzip
import hashlib
import io
import json
import lzma
import os
import re
import shutil
import stat
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import apt_sources

HERE = Path(__file__).resolve().parent
IMAGE_FILES = HERE / "image"
CACHE_DIR = Path(os.environ.get("BASALT_VM_CACHE", "/var/cache/basalt-vm"))
SUITE = "bookworm"
KERNEL_META = "linux-image-amd64"


@functools.cache
def mirror() -> str:
    """The Debian mirror of this machine's own apt sources (BASALT_VM_MIRROR overrides it)."""
    return apt_sources.debian_mirror(SUITE)


# Packages installed into the guest root (besides what minbase brings).
PACKAGES = [
    "busybox-static",
    "dbus",
    "e2fsprogs",
    "kmod",
    "lvm2",
    "multipath-tools",
    "open-iscsi",
    "procps",
    "python3",
    "python3-grpcio",
    "python3-protobuf",
    "python3-rtslib-fb",
    "targetcli-fb",
    "thin-provisioning-tools",
    "udev",
    "xfsprogs",
]

# Modules the initramfs loads (with their dependencies) to mount the root.
INITRAMFS_MODULES = ["virtio_pci", "virtio_blk", "crc32c_generic", "ext4"]

# Module subtrees never needed by the storage checks; dropped to keep the
# image small.  Nothing the checks load depends on them.
PRUNED_MODULE_DIRS = [
    "kernel/sound",
    "kernel/drivers/gpu",
    "kernel/drivers/media",
    "kernel/drivers/net/wireless",
    "kernel/drivers/net/ethernet",
    "kernel/drivers/infiniband",
    "kernel/drivers/staging",
    "kernel/drivers/bluetooth",
    "kernel/drivers/iio",
    "kernel/drivers/usb",
    "kernel/drivers/hid",
    "kernel/drivers/input",
    "kernel/drivers/video",
    "kernel/net/wireless",
    "kernel/net/mac80211",
    "kernel/net/bluetooth",
]


@dataclass(frozen=True)
class Variant:
    """An image flavour: packages on top of PACKAGES, the init the initramfs
    hands over to, and (besides the base) files of its own in image/<name>/."""

    name: str
    packages: tuple[str, ...] = ()
    init: str = "/sbin/basalt-init"


BASE = Variant("base")
# systemd as PID 1 and sshd, for Molecule; systemd-sysv makes /sbin/init
# systemd (Ansible's service_mgr fact reads it).  The target is systemd
# itself: the initramfs cannot follow /sbin/init's absolute link.
SYSTEMD = Variant("systemd", ("openssh-server", "python3-apt", "python3-venv", "systemd-sysv"), "/lib/systemd/systemd")
VARIANTS = {v.name: v for v in (BASE, SYSTEMD)}

HOST_TOOLS = {
    "debootstrap": "debootstrap",
    "dpkg-deb": "dpkg",
    "mkfs.ext4": "e2fsprogs",
    "qemu-system-x86_64": "qemu-system-x86",
}


@dataclass(frozen=True)
class Image:
    """Paths of a built image in the cache."""

    directory: Path
    kernel: Path
    initrd: Path
    root: Path
    manifest: dict[str, object]


def log(msg: str) -> None:
    print(f"build_image: {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], **kwargs: object) -> None:
    log("$ " + " ".join(cmd))
    subprocess.run(cmd, check=True, **kwargs)  # type: ignore[call-overload]


def missing_host_tools() -> list[str]:
    """Debian packages to install for the host tools that are missing."""
    return sorted({pkg for tool, pkg in HOST_TOOLS.items() if shutil.which(tool) is None})


def ensure_host_tools() -> None:
    """Install the host packages the VM tier needs when they are missing."""
    missing = missing_host_tools()
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise SystemExit(
            "build_image: missing host packages " + " ".join(missing) + " (install them with apt-get install -y ...)"
        )
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(["apt-get", "update"], env=env)
    run(["apt-get", "install", "-y", "--no-install-recommends", *missing], env=env)


def cache_key(variant: Variant = BASE) -> str:
    """Hash of every input of the image: packages, suite, mirror, scripts
    (a variant adds its own inputs; the base hashes none of a variant's)."""
    h = hashlib.sha256()
    h.update(json.dumps([SUITE, mirror(), KERNEL_META, PACKAGES, INITRAMFS_MODULES, PRUNED_MODULE_DIRS]).encode())
    files = [Path(__file__).resolve(), *sorted(p for p in IMAGE_FILES.iterdir() if p.is_file())]
    if variant != BASE:
        h.update(json.dumps([variant.name, variant.packages, variant.init]).encode())
        files += sorted(p for p in (IMAGE_FILES / variant.name).iterdir() if p.is_file())
    for path in files:
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def image_dir(key: str, variant: Variant = BASE) -> Path:
    """Each variant's images sit in their own directory, so that cleaning
    one variant's old keys never deletes another's image."""
    return CACHE_DIR / ("images" if variant == BASE else f"images-{variant.name}") / key


def load_image(directory: Path) -> Image | None:
    manifest_path = directory / "manifest.json"
    if not manifest_path.is_file():
        return None
    manifest = json.loads(manifest_path.read_text())
    img = Image(directory, directory / "vmlinuz", directory / "initrd.img", directory / "root.img", manifest)
    if all(p.is_file() for p in (img.kernel, img.initrd, img.root)):
        return img
    return None


# --- Debian package index -------------------------------------------------


def parse_packages(text: str) -> dict[str, dict[str, str]]:
    """Parse a Debian Packages index into {package: {field: value}}."""
    result: dict[str, dict[str, str]] = {}
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        last = ""
        for line in stanza.splitlines():
            if line[:1] in (" ", "\t") and last:
                fields[last] += "\n" + line.strip()
            elif ":" in line:
                last, _, value = line.partition(":")
                fields[last] = value.strip()
        if "Package" in fields:
            result[fields["Package"]] = fields
    return result


def read_packages_index(root: Path) -> dict[str, dict[str, str]]:
    """The Packages index debootstrap left (and verified) in the new root."""
    lists = root / "var/lib/apt/lists"
    found = sorted(lists.glob(f"*_dists_{SUITE}_main_binary-amd64_Packages*"))
    if not found:
        raise SystemExit(f"build_image: no Packages index under {lists}")
    raw = found[0].read_bytes()
    if found[0].name.endswith(".xz"):
        raw = lzma.decompress(raw)
    elif found[0].name.endswith(".gz"):
        raw = gzip.decompress(raw)
    return parse_packages(raw.decode())


def fetch_deb(fields: dict[str, str], dest_dir: Path) -> Path:
    """Download a package's .deb (cached) and check its SHA-256."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / Path(fields["Filename"]).name
    want = fields["SHA256"]
    if dest.is_file() and hashlib.sha256(dest.read_bytes()).hexdigest() == want:
        return dest
    url = f"{mirror()}/{fields['Filename']}"
    log(f"downloading {url}")
    tmp = dest.with_suffix(".part")
    with urllib.request.urlopen(url, timeout=120) as resp, tmp.open("wb") as out:
        shutil.copyfileobj(resp, out, 1 << 20)
    got = hashlib.sha256(tmp.read_bytes()).hexdigest()
    if got != want:
        tmp.unlink()
        raise SystemExit(f"build_image: SHA-256 mismatch for {url}")
    tmp.rename(dest)
    for other in dest_dir.glob("*.deb"):  # keep only the current kernel
        if other != dest:
            other.unlink()
    return dest


def kernel_package(index: dict[str, dict[str, str]]) -> dict[str, str]:
    """Resolve linux-image-amd64 to the versioned kernel package."""
    depends = index[KERNEL_META]["Depends"]
    name = re.split(r"[ ,(|]", depends.strip())[0]
    return index[name]


# --- initramfs --------------------------------------------------------------


def module_order(modules_dir: Path, wanted: list[str]) -> list[str]:
    """Module files (relative paths) for `wanted`, dependencies first."""
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in (modules_dir / "modules.dep").read_text().splitlines():
        path, _, rest = line.partition(":")
        deps[path] = rest.split()
        base = Path(path).name.split(".ko")[0].replace("-", "_")
        by_name[base] = path
    builtin = {
        Path(line).name.split(".ko")[0].replace("-", "_")
        for line in (modules_dir / "modules.builtin").read_text().splitlines()
    }
    order: list[str] = []

    def visit(path: str) -> None:
        if path in order:
            return
        # modules.dep lists the full closure; visiting keeps it ordered
        for dep in reversed(deps[path]):
            visit(dep)
        order.append(path)

    for name in wanted:
        if name in builtin:
            continue
        if name not in by_name:
            raise SystemExit(f"build_image: kernel has no module {name}")
        visit(by_name[name])
    return order


class Cpio:
    """Minimal writer of a 'newc' cpio archive (the initramfs format)."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.ino = 1

    def _entry(self, name: str, mode: int, data: bytes) -> None:
        namez = name.encode() + b"\0"
        header = "070701" + "".join(
            f"{v:08x}" for v in (self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(namez), 0)
        )
        self.ino += 1
        self.buf.write(header.encode() + namez)
        self.buf.write(b"\0" * (-(110 + len(namez)) % 4))
        self.buf.write(data)
        self.buf.write(b"\0" * (-len(data) % 4))

    def dir(self, name: str) -> None:
        self._entry(name, stat.S_IFDIR | 0o755, b"")

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def close(self) -> bytes:
        self._entry("TRAILER!!!", 0, b"")
        return self.buf.getvalue()


def make_initramfs(root: Path, kver: str, dest: Path, init: str) -> None:
    modules_dir = root / "lib/modules" / kver
    order = module_order(modules_dir, INITRAMFS_MODULES)
    cpio = Cpio()
    for d in ("bin", "dev", "proc", "sys", "newroot", "modules"):
        cpio.dir(d)
    cpio.file("bin/busybox", (root / "bin/busybox").read_bytes(), 0o755)
    # The applet links; never a link named busybox (it would loop).
    cpio.symlink("bin/sh", "busybox")
    names: list[str] = []
    for rel in order:
        data = (modules_dir / rel).read_bytes()
        name = Path(rel).name
        if name.endswith(".xz"):
            data, name = lzma.decompress(data), name[:-3]
        elif name.endswith(".gz"):
            data, name = gzip.decompress(data), name[:-3]
        cpio.file(f"modules/{name}", data)
        names.append(name)
    cpio.file("modules.order", ("\n".join(names) + "\n").encode())
    cpio.file("init.target", (init + "\n").encode())  # what /init switch_roots to
    cpio.file("init", (IMAGE_FILES / "initramfs-init.sh").read_bytes(), 0o755)
    dest.write_bytes(gzip.compress(cpio.close(), compresslevel=6))


# --- build --------------------------------------------------------------------


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below `path` (to undo what debootstrap mounted)."""
    prefix = str(path.resolve())
    found = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        mnt = line.split()[1].replace("\\040", " ")
        if mnt == prefix or mnt.startswith(prefix + "/"):
            found.append(mnt)
    return found


def remove_tree(path: Path) -> None:
    """Delete a build tree, first unmounting what debootstrap left mounted in
    it; refuse to delete anything while a mount remains below it."""
    if not path.exists():
        return
    for mnt in sorted(mounts_under(path), key=len, reverse=True):
        subprocess.run(["umount", "-l", mnt], check=False)
    if mounts_under(path):
        raise SystemExit(f"build_image: mounts remain under {path}; not deleting")
    shutil.rmtree(path)


def du_bytes(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return total


def slim_root(root: Path) -> None:
    """Remove what the guest never needs from the root tree."""
    for rel in (
        "usr/share/doc",
        "usr/share/man",
        "usr/share/info",
        "usr/share/locale",
        "var/cache/apt",
        "var/lib/apt/lists",
        "var/cache/debconf/templates.dat-old",
    ):
        p = root / rel
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
            p.mkdir()
        elif p.exists():
            p.unlink()


def configure_root(root: Path) -> None:
    shutil.copy(IMAGE_FILES / "basalt-init.sh", root / "sbin/basalt-init")
    (root / "sbin/basalt-init").chmod(0o755)
    # A bytecode cache for what Python imports from zip archives: Ansible's module payloads (the file says why).
    site = "usr/lib/python3/dist-packages"
    for name in ("basalt_zip_bytecode.py", "basalt-zip-bytecode.pth"):
        shutil.copy(IMAGE_FILES / name, root / site / name)
    # with its bytecode: every Python process of the guest loads it, some with PYTHONDONTWRITEBYTECODE
    run(["chroot", str(root), "python3", "-m", "py_compile", f"/{site}/basalt_zip_bytecode.py"])
    (root / "etc/hostname").write_text("basalt-vm\n")
    (root / "etc/fstab").write_text("# the VM's init mounts everything\n")
    iscsi = root / "etc/iscsi"
    iscsi.mkdir(parents=True, exist_ok=True)
    (iscsi / "initiatorname.iscsi").write_text("InitiatorName=iqn.2026-01.io.basalt:vm-default\n")
    (root / "etc/machine-id").write_text("0" * 31 + "1\n")
    # LIO's default db_root (the kernel complains when it is missing)
    (root / "etc/target").mkdir(exist_ok=True)
    for d in ("basalt", "results", "mnt"):
        (root / d).mkdir(exist_ok=True)


def configure_systemd(root: Path) -> None:
    """The systemd variant: sshd whose host key is made at first boot and
    whose authorized key comes from the run (basalt-ssh-setup, through the
    results share), a static address on QEMU's user network (networkd)."""
    files = IMAGE_FILES / SYSTEMD.name
    for name, dest, mode in (
        ("basalt-ssh-setup.sh", "usr/local/sbin/basalt-ssh-setup", 0o755),
        ("basalt-ssh-setup.service", "etc/systemd/system/basalt-ssh-setup.service", 0o644),
        ("sshd-basalt.conf", "etc/ssh/sshd_config.d/basalt.conf", 0o644),
        ("basalt.network", "etc/systemd/network/10-basalt.network", 0o644),
        ("modules-load-basalt.conf", "etc/modules-load.d/basalt.conf", 0o644),
    ):
        (root / dest).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(files / name, root / dest)
        (root / dest).chmod(mode)
    # openssh-server's postinst made host keys: every VM makes its own.
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    # --root: offline enablement (no systemd running in the build chroot).
    systemctl = ["chroot", str(root), "systemctl", "--root=/"]
    run([*systemctl, "enable", "basalt-ssh-setup.service", "systemd-networkd.service"])
    # Timers that would run apt (or scrub) behind a test's back.
    run([*systemctl, "mask", "apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer", "fstrim.timer"])


def build(key: str, variant: Variant = BASE) -> Image:
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    work = CACHE_DIR / f"build-{key}-{os.getpid()}"
    root = work / "root"
    out = work / "out"
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    # Build trees left by an interrupted build (the caller holds the cache
    # lock, so no other build is running).
    for stale in CACHE_DIR.glob("build-*"):
        remove_tree(stale)
    try:
        out.mkdir(parents=True)
        run(
            [
                "debootstrap",
                "--variant=minbase",
                "--arch=amd64",
                "--include=" + ",".join([*PACKAGES, *variant.packages]),
                SUITE,
                str(root),
                mirror(),
            ],
            stdout=subprocess.DEVNULL,
        )
        timings["debootstrap_s"] = round(time.monotonic() - t0, 1)

        index = read_packages_index(root)
        kpkg = kernel_package(index)
        deb = fetch_deb(kpkg, CACHE_DIR / "debs")
        kdir = work / "kernel"
        run(["dpkg-deb", "-x", str(deb), str(kdir)])
        kvers = sorted(p.name for p in (kdir / "lib/modules").iterdir())
        if len(kvers) != 1:
            raise SystemExit(f"build_image: unexpected kernel trees {kvers}")
        kver = kvers[0]
        shutil.copy(kdir / "boot" / f"vmlinuz-{kver}", out / "vmlinuz")
        mods = root / "lib/modules" / kver
        shutil.copytree(kdir / "lib/modules" / kver, mods, symlinks=True)
        for rel in PRUNED_MODULE_DIRS:
            if (mods / rel).is_dir():
                shutil.rmtree(mods / rel)
        # depmod -b equivalent: the guest's own depmod, run in the new root
        run(["chroot", str(root), "/sbin/depmod", "-a", kver])
        timings["kernel_s"] = round(time.monotonic() - t0 - sum(timings.values()), 1)

        versions = {name: index[name]["Version"] for name in [*PACKAGES, *variant.packages] if name in index}
        versions[kpkg["Package"]] = kpkg["Version"]
        make_initramfs(root, kver, out / "initrd.img", variant.init)
        configure_root(root)
        if variant == SYSTEMD:
            configure_systemd(root)
        slim_root(root)
        t1 = time.monotonic()

        size = du_bytes(root)
        img_mib = (int(size * 1.25) >> 20) + 512
        img = out / "root.img"
        with img.open("wb") as f:
            f.truncate(img_mib << 20)
        run(["mkfs.ext4", "-q", "-F", "-L", "basalt-root", "-m", "0", "-d", str(root), str(img)])
        timings["mkfs_s"] = round(time.monotonic() - t1, 1)
        img.chmod(0o444)

        manifest = {
            "key": key,
            "variant": variant.name,
            "suite": SUITE,
            "mirror": mirror(),
            "kernel": kver,
            "packages": versions,
            "root_image_mib": img_mib,
            "build_seconds": round(time.monotonic() - t0, 1),
            "timings": timings,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        final = image_dir(key, variant)
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            shutil.rmtree(final)
        out.rename(final)
    finally:
        remove_tree(work)
    # keep the cache bounded: only the current key of this variant stays
    for other in image_dir(key, variant).parent.iterdir():
        if other.name != key:
            shutil.rmtree(other, ignore_errors=True)
    image = load_image(image_dir(key, variant))
    assert image is not None
    return image


def get_image(force: bool = False, variant: Variant = BASE) -> tuple[Image, bool]:
    """The image of `variant` for the current inputs, building it when needed.

    Returns (image, built) where `built` tells whether a build happened."""
    key = cache_key(variant)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with (CACHE_DIR / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not force:
            image = load_image(image_dir(key, variant))
            if image is not None:
                return image, False
        ensure_host_tools()
        if os.geteuid() != 0:
            raise SystemExit("build_image: building the image needs root (debootstrap)")
        return build(key, variant), True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild even when the cached image is current")
    parser.add_argument("--print-key", action="store_true", help="print the cache key of the current inputs and exit")
    parser.add_argument("--variant", choices=sorted(VARIANTS), default=BASE.name, help="image flavour (default base)")
    args = parser.parse_args(argv)
    variant = VARIANTS[args.variant]
    if args.print_key:
        print(cache_key(variant))
        return 0
    t0 = time.monotonic()
    image, built = get_image(force=args.force, variant=variant)
    what = "built" if built else "reused cached"
    log(f"{what} image {image.directory} (kernel {image.manifest['kernel']}) in {time.monotonic() - t0:.1f} s")
    print(image.directory)
    return 0


if __name__ == "__main__":
    sys.exit(main())
