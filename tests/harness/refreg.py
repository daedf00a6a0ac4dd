"""A referrers-API registry (go-containerregistry's pkg/registry behind refreg/main.go).

Built offline from Debian packages: the library's source .deb from Debian 13 (not in bookworm)
through a private apt configuration, compiled with bookworm's golang-go in GOPATH mode.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

from harness.debs import download_debs, extract_deb

PACKAGE = "golang-github-google-go-containerregistry-dev=0.20.1+ds1-1"
SOURCE = Path(__file__).parent / "refreg" / "main.go"


def refreg_binary(cache_dir: Path) -> Path:
    """Build `cache_dir/refreg` once (under a file lock); raise RuntimeError when that is impossible."""
    binary = cache_dir / "refreg"
    cache_dir.mkdir(parents=True, exist_ok=True)
    with (cache_dir / ".refreg.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if binary.exists():
            return binary
        if shutil.which("go") is None:
            raise RuntimeError("refreg needs the Go toolchain (Debian package golang-go)")
        work = cache_dir / f"refreg-build-{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        try:
            work.mkdir()
            download_debs([PACKAGE], work, architectures=("amd64",), suites=("trixie",))
            (deb,) = work.glob("golang-github-google-go-containerregistry-dev_*.deb")
            root = extract_deb(deb, work / "root")
            package_dir = work / "gopath" / "src" / "refreg"
            package_dir.mkdir(parents=True)
            shutil.copyfile(SOURCE, package_dir / "main.go")
            env = {
                **os.environ,
                "GO111MODULE": "off",
                "GOFLAGS": "",
                "CGO_ENABLED": "0",
                "GOPATH": f"{work / 'gopath'}:{root / 'usr/share/gocode'}:/usr/share/gocode",
                "GOCACHE": os.environ.get("GOCACHE", str(cache_dir / "go-build-cache")),
            }
            result = subprocess.run(
                ["go", "build", "-trimpath", "-o", str(binary), "."],
                cwd=package_dir,
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
            )
            if result.returncode != 0:
                raise RuntimeError(f"go build of refreg failed:\n{result.stderr}")
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return binary
