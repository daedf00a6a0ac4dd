"""`acceld copy` and `acceld inspect` run as real subprocesses against real registries.

Acceptance of issue 2: round trips of an OCI image, a Docker schema2 image and 2-platform
indexes between a token-auth and a Basic-auth registry and OCI layouts with digests unchanged
(checked with skopeo), and one-line errors without tracebacks.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from harness.clients import skopeo, skopeo_args
from harness.images import LayoutImage
from harness.registry import RunningRegistry
from harness.testimages import ImageSet

ACCELD = str(Path(sys.executable).parent / "acceld")


def acceld(
    *args: str, config: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    argv = [ACCELD, *args, *(["--config", str(config)] if config else [])]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def assert_one_line_error(result: subprocess.CompletedProcess[str], expected: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert errors == lines[-1:], result.stderr  # progress lines may come before the one error line
    assert expected in errors[0]


def write_config(path: Path, registries: list[tuple[RunningRegistry, tuple[str, str] | None]]) -> Path:
    config = {
        "registries": {
            registry.host: {
                "plain_http": registry.scheme == "http",
                **({"username": creds[0], "password": creds[1]} if creds else {}),
            }
            for registry, creds in registries
        }
    }
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def config(
    tmp_path: Path,
    registry_token: RunningRegistry,
    registry_basic: RunningRegistry,
    registry_plain: RunningRegistry,
) -> Path:
    return write_config(
        tmp_path / "acceld.yaml",
        [
            (registry_token, ("alice", registry_token.users["alice"])),
            (registry_basic, ("alice", registry_basic.users["alice"])),
            (registry_plain, None),
        ],
    )


def raw_digest(registry: RunningRegistry, reference: str) -> str:
    raw = skopeo(
        "inspect",
        "--raw",
        *skopeo_args(registry, "alice" if registry.users else None),
        f"docker://{registry.host}/{reference}",
    ).stdout
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def referenced_blobs(layout: Path, digest: str) -> set[str]:
    doc = json.loads((layout / "blobs" / "sha256" / digest.split(":")[1]).read_bytes())
    if "manifests" in doc:
        return {digest} | {b for m in doc["manifests"] for b in referenced_blobs(layout, m["digest"])}
    return {digest, doc["config"]["digest"], *(layer["digest"] for layer in doc["layers"])}


@pytest.mark.parametrize("name", ["busybox_amd64", "docker_amd64", "busybox_index", "docker_list"])
def test_copy_round_trip_keeps_digests(
    name: str,
    test_images: ImageSet,
    config: Path,
    tmp_path: Path,
    registry_token: RunningRegistry,
    registry_basic: RunningRegistry,
) -> None:
    image: LayoutImage = getattr(test_images, name)
    flags = ["--all-platforms"] if "index" in name or "list" in name else []
    repo = f"cli/{name.replace('_', '-')}"
    on_token = f"{registry_token.host}/{repo}:v1"
    on_basic = f"{registry_basic.host}/{repo}:v1"
    back = tmp_path / "back"

    assert ok(acceld("copy", *flags, image.ref, on_token, config=config)) == image.digest
    assert raw_digest(registry_token, f"{repo}:v1") == image.digest
    assert ok(acceld("copy", *flags, on_token, on_basic, config=config)) == image.digest
    assert raw_digest(registry_basic, f"{repo}:v1") == image.digest
    assert ok(acceld("copy", *flags, on_basic, f"oci:{back}:v1", config=config)) == image.digest

    index = json.loads((back / "index.json").read_text())
    assert [
        (m["digest"], m["annotations"]["org.opencontainers.image.ref.name"]) for m in index["manifests"]
    ] == [(image.digest, "v1")]
    stored = {f"sha256:{p.name}" for p in (back / "blobs" / "sha256").iterdir()}
    assert stored == referenced_blobs(image.layout, image.digest)
    for digest in stored:  # every blob is byte-identical to the source layout's
        hex_digest = digest.split(":")[1]
        assert (back / "blobs" / "sha256" / hex_digest).read_bytes() == (
            image.layout / "blobs" / "sha256" / hex_digest
        ).read_bytes()


def test_copy_within_a_registry_mounts_blobs(
    test_images: ImageSet, config: Path, registry_token: RunningRegistry
) -> None:
    image = test_images.busybox_amd64
    src, dst = f"{registry_token.host}/cli/mount-a:v1", f"{registry_token.host}/cli/mount-b:v1"
    ok(acceld("copy", image.ref, src, config=config))
    result = acceld("copy", src, dst, config=config)
    assert ok(result) == image.digest
    assert result.stderr.count(": mounted") == 2  # config and layer
    assert raw_digest(registry_token, "cli/mount-b:v1") == image.digest


def test_platform_selection(
    test_images: ImageSet, config: Path, registry_plain: RunningRegistry, tmp_path: Path
) -> None:
    ref = f"{registry_plain.host}/cli/platforms:multi"
    ok(acceld("copy", "--all-platforms", test_images.busybox_index.ref, ref, config=config))
    arm = ok(
        acceld(
            "copy", "--platform", "linux/arm64/v8", ref, f"{registry_plain.host}/cli/arm:v1", config=config
        )
    )
    assert arm == test_images.busybox_arm64.digest
    both = ok(
        acceld(
            "copy",
            "--platform",
            "linux/arm64",
            "--platform",
            "linux/amd64",
            ref,
            f"oci:{tmp_path / 'both'}:v1",
            config=config,
        )
    )
    assert both == test_images.busybox_index.digest  # all platforms chosen: the index stays unchanged
    host = ok(acceld("copy", ref, f"oci:{tmp_path / 'host'}:v1", config=config))
    assert host in (test_images.busybox_amd64.digest, test_images.busybox_arm64.digest)


def test_inspect(test_images: ImageSet, config: Path, registry_plain: RunningRegistry) -> None:
    ref = f"{registry_plain.host}/cli/inspect:v1"
    ok(acceld("copy", "--all-platforms", test_images.docker_list.ref, ref, config=config))
    summary = ok(acceld("inspect", ref, config=config))
    assert f"Digest:     {test_images.docker_list.digest}" in summary
    assert "linux/arm64/v8" in summary and test_images.docker_arm64.digest in summary
    raw = acceld("inspect", "--raw", ref, config=config)
    assert hashlib.sha256(raw.stdout.encode()).hexdigest() == test_images.docker_list.digest.split(":")[1]
    child = ok(
        acceld(
            "inspect", f"{registry_plain.host}/cli/inspect@{test_images.docker_amd64.digest}", config=config
        )
    )
    assert "Platform:   linux/amd64" in child and "Layers:     1" in child
    assert "Platform:   linux/amd64" in ok(acceld("inspect", test_images.busybox_amd64.ref))


@pytest.mark.parametrize("command", [[], ["copy"], ["inspect"]])
def test_help(command: list[str]) -> None:
    result = acceld(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    if command:
        assert "[registry/]repo[:tag]" in result.stdout


def test_pull_only_credentials_give_insufficient_permission(
    test_images: ImageSet, tmp_path: Path, registry_token: RunningRegistry
) -> None:
    reader = write_config(
        tmp_path / "reader.yaml", [(registry_token, ("reader", registry_token.users["reader"]))]
    )
    result = acceld(
        "copy", test_images.busybox_amd64.ref, f"{registry_token.host}/cli/denied:v1", config=reader
    )
    assert_one_line_error(result, f"insufficient permission for {registry_token.host}/cli/denied")


@pytest.mark.parametrize("registry_name", ["registry_token", "registry_basic"])
def test_wrong_password(registry_name: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    registry: RunningRegistry = request.getfixturevalue(registry_name)
    wrong = write_config(tmp_path / "wrong.yaml", [(registry, ("alice", "wrong-password"))])
    assert_one_line_error(
        acceld("inspect", f"{registry.host}/cli/any:v1", config=wrong), "wrong username or password"
    )


def test_one_line_errors(
    config: Path, registry_plain: RunningRegistry, tmp_path: Path, test_images: ImageSet
) -> None:
    assert_one_line_error(
        acceld("inspect", "--plain-http", "127.0.0.1:9/cli/x:v1"), "cannot reach registry 127.0.0.1:9"
    )
    assert_one_line_error(acceld("copy", "Bad//Ref", f"oci:{tmp_path / 'x'}"), "invalid reference")
    assert_one_line_error(
        acceld("inspect", f"{registry_plain.host}/cli/none:missing", config=config),
        "manifest missing not found",
    )
    assert_one_line_error(
        acceld("copy", f"{registry_plain.host}/cli/none:missing", f"oci:{tmp_path / 'y'}:v1", config=config),
        "not found",
    )
    assert_one_line_error(
        acceld("copy", "--platform", "linux", test_images.busybox_index.ref, f"oci:{tmp_path / 'z'}:v1"),
        "invalid platform",
    )
    assert_one_line_error(acceld("inspect", f"oci:{tmp_path / 'nothing'}"), "not an OCI image layout")
    assert_one_line_error(acceld("inspect", "busybox", config=tmp_path / "absent.yaml"), "cannot read config")
    (tmp_path / "a-file").write_text("")
    assert_one_line_error(
        acceld("copy", test_images.busybox_amd64.ref, f"oci:{tmp_path / 'a-file' / 'layout'}:v1"),
        "cannot create OCI layout",
    )
    (tmp_path / "bad.yaml").write_text("registries:\n  h:\n    plain_htp: true\n")
    assert_one_line_error(acceld("inspect", "busybox", config=tmp_path / "bad.yaml"), "plain_htp")
