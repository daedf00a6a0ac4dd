"""The acceld container image built offline: a local Debian base with python3 (debootstrap, cached in
.cache/testimages), wheels made on the host, and podman/buildah from Debian.

Podman runs with the runc runtime and with resource limits below the current process's: sandboxed
CI machines may forbid raising limits (podman's default is 1048576 open files) and crun refuses
hybrid cgroup v1/v2 hosts.
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
from pathlib import Path

from harness.debs import debian_mirror
from harness.testimages import _cached

PYTHON_BASE_RECIPE = "pybase-v1"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
# Tracked files the image build needs besides the wheels.
CONTEXT_FILES = ("Containerfile", "pyproject.toml", "README.md", "LICENSE", "src")


def podman_args() -> list[str]:
    """Global podman options: runc (crun refuses hybrid cgroup v1/v2 hosts)."""
    return ["podman", "--runtime", "runc"]


def limit_args() -> list[str]:
    """`--ulimit` options at half the current limits (a process may always lower its limits)."""
    options = []
    for name, limit in (("nofile", resource.RLIMIT_NOFILE), ("nproc", resource.RLIMIT_NPROC)):
        soft, hard = resource.getrlimit(limit)
        cap = min(value for value in (soft, hard, 65536) if value != resource.RLIM_INFINITY)
        options += ["--ulimit", f"{name}={cap // 2}:{cap // 2}"]
    return options


def _build_python_base(target: Path) -> None:
    rootfs = target / "work" / "rootfs"
    rootfs.parent.mkdir(parents=True)
    result = subprocess.run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(BASE_PACKAGES)}",
            "bookworm",
            str(rootfs),
            debian_mirror(),
        ],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"debootstrap failed ({result.returncode}):\n{result.stdout[-3000:]}{result.stderr}"
        )
    for leftover in [
        *rootfs.glob("var/cache/apt/archives/*.deb"),
        *rootfs.glob("var/lib/apt/lists/*_*"),
    ]:
        leftover.unlink()
    # GNU tar keeps owners, setuid bits and capabilities as they are (podman import reads it)
    subprocess.run(
        [
            "tar",
            "--numeric-owner",
            "--xattrs",
            "-C",
            str(rootfs),
            "-cf",
            str(target / "rootfs.tar"),
            ".",
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    shutil.rmtree(target / "work")
    (target / "images.json").write_text(json.dumps({"rootfs": "rootfs.tar"}))


def python_base_rootfs(cache_root: Path) -> Path:
    """A Debian bookworm minbase rootfs tar with python3 and venv (~1 min once, needs root)."""
    return _cached(cache_root, PYTHON_BASE_RECIPE, _build_python_base) / "rootfs.tar"


def build_context(repo_root: Path, directory: Path) -> Path:
    """`directory` with the image's sources and `wheels/`: acceld and every dependency as wheels,
    made by the host's pip, so the build itself needs no network."""
    directory.mkdir(parents=True)
    for name in CONTEXT_FILES:
        source = repo_root / name
        if source.is_dir():
            shutil.copytree(
                source, directory / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
            )
        else:
            shutil.copy2(source, directory / name)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--wheel-dir",
            str(directory / "wheels"),
            str(directory),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if result.returncode != 0:
        raise RuntimeError(f"pip wheel failed:\n{result.stdout}{result.stderr}")
    return directory


def podman(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*podman_args(), *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(
            f"podman {' '.join(args[:2])} failed ({result.returncode}):\n{result.stderr[-3000:]}"
        )
    return result
