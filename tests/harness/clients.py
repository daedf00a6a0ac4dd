"""Independent clients pointed at a RunningRegistry: Docker config.json files and skopeo."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Literal

from harness.images import OCI_INDEX, OCI_MANIFEST, LayoutImage, export_dir
from harness.registry import RunningRegistry

Direction = Literal["", "src-", "dest-"]
POLICY = {"default": [{"type": "insecureAcceptAnything"}]}


def docker_config(
    tmp_path: Path,
    registry: RunningRegistry,
    user: str | None,
    *,
    identity_token: str | None = None,
    split_fields: bool = False,
) -> Path:
    """Write `<tmp_path>/docker-config/config.json` for `user` and return its dir (the DOCKER_CONFIG value).

    Credentials go into `auth` (base64 user:password) unless `split_fields` asks for separate
    `username`/`password`; `identity_token` adds Docker's `identitytoken` (a refresh token).
    """
    entry: dict[str, str] = {}
    if user is not None:
        password = registry.users[user]
        if split_fields:
            entry.update(username=user, password=password)
        else:
            entry["auth"] = base64.b64encode(f"{user}:{password}".encode()).decode()
    if identity_token is not None:
        entry["identitytoken"] = identity_token
    directory = tmp_path / "docker-config"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps({"auths": {registry.host: entry}}, indent=1))
    return directory


def skopeo_args(registry: RunningRegistry, user: str | None = None, direction: Direction = "") -> list[str]:
    """skopeo options to reach `registry` as `user` (None = anonymous); direction "src-"/"dest-" for copy."""
    args = (
        [f"--{direction}tls-verify=false"]
        if registry.scheme == "http"
        else [f"--{direction}cert-dir={registry.cert_dir}"]
    )
    if user is not None:
        args.append(f"--{direction}creds={user}:{registry.users[user]}")
    else:
        args.append(f"--{direction}no-creds")
    return args


def policy_file(directory: Path) -> Path:
    path = directory / "policy.json"
    if not path.exists():
        directory.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(POLICY))
    return path


def skopeo(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[bytes]:
    """Run skopeo with an accept-anything signature policy; on failure raise with its stderr."""
    policy = policy_file(Path(__file__).resolve().parents[2] / ".cache" / "skopeo")
    result = subprocess.run(["skopeo", "--policy", str(policy), *args], capture_output=True, timeout=timeout)
    if check and result.returncode != 0:
        message = result.stderr.decode(errors="replace").strip()
        raise AssertionError(f"skopeo {' '.join(args)} failed ({result.returncode}): {message}")
    return result


def skopeo_copy(
    src: str,
    dest: str,
    *,
    src_registry: RunningRegistry | None = None,
    src_user: str | None = None,
    dest_registry: RunningRegistry | None = None,
    dest_user: str | None = None,
    extra: tuple[str, ...] = ("--all", "--preserve-digests"),
    check: bool = True,
) -> subprocess.CompletedProcess[bytes]:
    """`skopeo copy SRC DEST` (transport-qualified, e.g. `oci:DIR:TAG`, `docker://HOST/REPO:TAG`)."""
    args = ["copy", "--quiet", *extra]
    if src_registry is not None:
        args += skopeo_args(src_registry, src_user, "src-")
    if dest_registry is not None:
        args += skopeo_args(dest_registry, dest_user, "dest-")
    return skopeo(*args, src, dest, check=check)


def skopeo_inspect_raw(registry: RunningRegistry, reference: str, user: str | None = None) -> bytes:
    """The manifest bytes the registry serves for `reference` (HOST/REPO:TAG or @DIGEST)."""
    result = skopeo("inspect", "--raw", *skopeo_args(registry, user), f"docker://{reference}")
    return result.stdout


def push_image(
    image: LayoutImage, registry: RunningRegistry, reference: str, user: str | None, scratch: Path
) -> None:
    """Push `image` byte-for-byte (all platforms, digests kept) to `registry` as `reference` (REPO:TAG).

    Uses skopeo. OCI images go straight from the layout; Docker schema2 ones through a `dir:` copy
    in `scratch`, because skopeo's `oci:` transport does not see Docker media types.
    """
    source = image.ref
    if image.media_type not in (OCI_MANIFEST, OCI_INDEX):
        hex_digest = image.digest.partition(":")[2]
        source = f"dir:{export_dir(image, scratch / f'dir-{hex_digest[:16]}')}"
    skopeo_copy(source, f"docker://{registry.host}/{reference}", dest_registry=registry, dest_user=user)


ACCELD = str(Path(sys.executable).with_name("acceld"))


def acceld(*args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    """Run the installed `acceld` command with its own layer cache and no PATH tools."""
    return subprocess.run(
        [ACCELD, *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={"ACCELD_CACHE_DIR": str(cache), "PATH": ""},
    )
