"""Download Debian packages for any architecture through a private apt configuration.

The system's own apt state is untouched: lists and caches live under the given directory. Only
the machine's Debian mirror is contacted (the one the system's sources use for bookworm).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from pathlib import Path

SUITES = ("bookworm", "bookworm-updates")
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


def debian_mirror() -> str:
    """The Debian archive URI the system's apt sources use for bookworm (not the security archive)."""
    candidates: list[str] = []
    for sources in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for stanza in sources.read_text().split("\n\n"):
            uris = re.search(r"^URIs:\s*(\S+)", stanza, re.MULTILINE)
            suites = re.search(r"^Suites:\s*(.+)$", stanza, re.MULTILINE)
            if uris and suites and "bookworm" in suites.group(1).split():
                candidates.append(uris.group(1))
    for list_file in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*.list"))]:
        if list_file.exists():
            for line in list_file.read_text().splitlines():
                match = re.match(r"deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+bookworm\s", line + " ")
                if match:
                    candidates.append(match.group(1))
    mirror = next((uri for uri in candidates if "security" not in uri), None)
    if mirror is None:
        raise RuntimeError("no Debian bookworm mirror in /etc/apt/sources.list or /etc/apt/sources.list.d")
    return mirror


def download_debs(
    packages: Sequence[str],
    dest: Path,
    architectures: Sequence[str] = ("amd64", "arm64"),
    suites: Sequence[str] = SUITES,
) -> None:
    """`apt-get download` `packages` (e.g. "busybox-static:arm64") into `dest`; raise with apt's output."""
    apt = dest / "apt"
    (apt / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (apt / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    mirror = debian_mirror()
    (apt / "sources.list").write_text(
        "".join(f"deb [signed-by={KEYRING}] {mirror} {suite} main\n" for suite in suites)
    )
    options = [
        f"-oDir::Etc::SourceList={apt / 'sources.list'}",
        "-oDir::Etc::SourceParts=/dev/null",
        f"-oDir::State::Lists={apt / 'lists'}",
        f"-oDir::Cache={apt / 'cache'}",
        f"-oAPT::Architecture={architectures[0]}",
        *(f"-oAPT::Architectures::={arch}" for arch in architectures),
    ]
    for command in (["update"], ["download", *packages]):
        result = subprocess.run(
            ["apt-get", "-q", *options, *command], cwd=dest, capture_output=True, text=True, timeout=600
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"apt-get {command[0]} from {mirror} failed ({result.returncode}):\n"
                f"{result.stdout}{result.stderr}"
            )


def extract_deb(deb: Path, root: Path) -> Path:
    """Unpack the data part of `deb` into `root` (dpkg-deb -x, no maintainer scripts)."""
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True, capture_output=True, timeout=120)
    return root
