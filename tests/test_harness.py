"""The harness itself: each registry fixture accepts exactly the clients it should (checked with skopeo)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import ssl
import subprocess
import tarfile
from pathlib import Path

import httpx
import pytest
from harness.clients import (
    docker_config,
    push_image,
    skopeo,
    skopeo_args,
    skopeo_copy,
    skopeo_inspect_raw,
)
from harness.images import (
    LayoutImage,
    build_image,
    build_referrer,
    child_descriptors,
    read_blob_json,
    tar_directory,
)
from harness.registry import RunningRegistry
from harness.testimages import WHITEOUT_REMOVED, ImageSet


@pytest.fixture(scope="module")
def small_image(tmp_path_factory: pytest.TempPathFactory) -> LayoutImage:
    root = tmp_path_factory.mktemp("small-image")
    tree = root / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "hello.txt").write_text("hello from the acceld harness\n")
    layer = tar_directory(tree, root / "layer.tar", mtime=1_700_000_000)
    return build_image(root / "layout", [layer], "v1")


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def push(image: LayoutImage, registry: RunningRegistry, repository: str, user: str | None) -> None:
    skopeo_copy(
        image.ref, f"docker://{registry.ref(repository, 'v1')}", dest_registry=registry, dest_user=user
    )


def test_plain_registry_accepts_anonymous_push(
    registry_plain: RunningRegistry, small_image: LayoutImage
) -> None:
    push(small_image, registry_plain, "test/plain", None)
    assert (
        sha256(skopeo_inspect_raw(registry_plain, registry_plain.ref("test/plain", "v1")))
        == small_image.digest
    )


def test_basic_registry_checks_password(registry_basic: RunningRegistry, small_image: LayoutImage) -> None:
    push(small_image, registry_basic, "test/basic", "alice")
    raw = skopeo_inspect_raw(registry_basic, registry_basic.ref("test/basic", "v1"), "reader")
    assert sha256(raw) == small_image.digest

    wrong = skopeo(
        "inspect",
        "--raw",
        "--tls-verify=false",
        "--creds=alice:wrong",
        f"docker://{registry_basic.ref('test/basic', 'v1')}",
        check=False,
    )
    assert wrong.returncode != 0
    assert b"unauthorized" in wrong.stderr.lower()
    anonymous = skopeo(
        "inspect",
        "--raw",
        *skopeo_args(registry_basic),
        f"docker://{registry_basic.ref('test/basic', 'v1')}",
        check=False,
    )
    assert anonymous.returncode != 0


def test_token_registry_enforces_rights(registry_token: RunningRegistry, small_image: LayoutImage) -> None:
    tokens = registry_token.tokens
    assert tokens is not None
    tokens.clear()
    push(small_image, registry_token, "test/token", "alice")
    assert any(
        t.account == "alice" and ("repository", "test/token", ("pull", "push")) in t.access
        for t in tokens.issued
    )
    raw = skopeo_inspect_raw(registry_token, registry_token.ref("test/token", "v1"), "reader")
    assert sha256(raw) == small_image.digest

    denied = skopeo_copy(
        small_image.ref,
        f"docker://{registry_token.ref('test/token', 'v2')}",
        dest_registry=registry_token,
        dest_user="reader",
        check=False,
    )
    assert denied.returncode != 0
    assert b"denied" in denied.stderr.lower()
    assert any(
        t.account == "reader" and ("repository", "test/token", ("pull",)) in t.access for t in tokens.issued
    )

    wrong = skopeo(
        "inspect",
        "--raw",
        "--tls-verify=false",
        "--creds=reader:wrong",
        f"docker://{registry_token.ref('test/token', 'v1')}",
        check=False,
    )
    assert wrong.returncode != 0


def test_token_registry_anonymous_pull_only_public(
    registry_token: RunningRegistry, small_image: LayoutImage
) -> None:
    push(small_image, registry_token, "public/hello", "alice")
    raw = skopeo_inspect_raw(registry_token, registry_token.ref("public/hello", "v1"))
    assert sha256(raw) == small_image.digest
    push(small_image, registry_token, "private/hello", "alice")
    hidden = skopeo(
        "inspect",
        "--raw",
        *skopeo_args(registry_token),
        f"docker://{registry_token.ref('private/hello', 'v1')}",
        check=False,
    )
    assert hidden.returncode != 0


def test_token_server_protocol(registry_token: RunningRegistry) -> None:
    tokens, realm = registry_token.tokens, registry_token.token_server
    assert tokens is not None and realm is not None
    scope = "repository:test/a:pull,push repository:test/b:pull"
    answer = httpx.get(realm, params={"service": "test-registry", "scope": scope}, auth=("reader", "r3ader"))
    assert answer.status_code == 200
    assert set(answer.json()) >= {"token", "access_token", "expires_in", "issued_at"}
    assert tokens.issued[-1].access == (
        ("repository", "test/a", ("pull",)),
        ("repository", "test/b", ("pull",)),
    )

    assert httpx.get(realm, params={"service": "other"}).status_code == 400
    assert httpx.get(realm, params={"service": "test-registry"}, auth=("alice", "nope")).status_code == 401

    form = {
        "grant_type": "password",
        "username": "alice",
        "password": "s3cret",
        "service": "test-registry",
        "scope": "repository:test/a:push",
    }
    assert httpx.post(realm, data=form).status_code == 200
    assert httpx.post(realm, data={**form, "password": "nope"}).status_code == 401
    assert "refresh_token" in httpx.post(realm, data={**form, "access_type": "offline"}).json()
    refresh = tokens.issue_refresh_token("alice")
    answer = httpx.post(
        realm,
        data={
            "grant_type": "refresh_token",
            "refresh_token": refresh,
            "service": "test-registry",
            "scope": "registry:catalog:*",
        },
    )
    assert answer.status_code == 200
    catalog = httpx.get(
        f"{registry_token.url}/v2/_catalog", headers={"Authorization": f"Bearer {answer.json()['token']}"}
    )
    assert catalog.status_code == 200


def test_tls_registry_needs_its_ca(
    registry_tls: RunningRegistry, small_image: LayoutImage, tmp_path: Path
) -> None:
    assert registry_tls.ca_file is not None and registry_tls.url.startswith("https://")
    push(small_image, registry_tls, "test/tls", "alice")
    raw = skopeo_inspect_raw(registry_tls, registry_tls.ref("test/tls", "v1"), "reader")
    assert sha256(raw) == small_image.digest
    assert (
        httpx.get(
            f"{registry_tls.url}/v2/", verify=ssl.create_default_context(cafile=registry_tls.ca_file)
        ).status_code
        == 401
    )

    untrusted = skopeo(
        "inspect",
        "--raw",
        "--creds=reader:r3ader",
        f"--cert-dir={tmp_path}",
        f"docker://{registry_tls.ref('test/tls', 'v1')}",
        check=False,
    )
    assert untrusted.returncode != 0
    assert b"certificate" in untrusted.stderr.lower()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{registry_tls.url}/v2/")


def test_docker_config_is_read_by_skopeo(
    registry_token: RunningRegistry, small_image: LayoutImage, tmp_path: Path
) -> None:
    push(small_image, registry_token, "test/config", "alice")
    config_dir = docker_config(tmp_path, registry_token, "reader")
    auths = json.loads((config_dir / "config.json").read_text())["auths"]
    assert set(auths) == {registry_token.host}
    result = skopeo(
        "inspect",
        "--raw",
        "--tls-verify=false",
        f"--authfile={config_dir / 'config.json'}",
        f"docker://{registry_token.ref('test/config', 'v1')}",
    )
    assert sha256(result.stdout) == small_image.digest


def elf_machine(tar_file: Path, member: str) -> int:
    with tarfile.open(tar_file) as tar:
        extracted = tar.extractfile(member)
        assert extracted is not None
        header = extracted.read(20)
    assert header[:4] == b"\x7fELF"
    return int.from_bytes(header[18:20], "little")


def test_busybox_layers_hold_real_binaries_per_architecture(test_images: ImageSet) -> None:
    assert elf_machine(test_images.tars["busybox-amd64"], "bin/busybox") == 62  # EM_X86_64
    assert elf_machine(test_images.tars["busybox-arm64"], "bin/busybox") == 183  # EM_AARCH64
    index = test_images.busybox_index.read_json()
    platforms = [m["platform"] for m in index["manifests"]]
    assert platforms == [
        {"architecture": "amd64", "os": "linux"},
        {"architecture": "arm64", "os": "linux", "variant": "v8"},
    ]
    config = read_blob_json(test_images.layout, test_images.busybox_arm64.read_json()["config"]["digest"])
    assert config["rootfs"]["diff_ids"] == [sha256(test_images.tars["busybox-arm64"].read_bytes())]


def test_whiteout_image_upper_layer(test_images: ImageSet) -> None:
    with tarfile.open(test_images.tars["whiteout-upper"]) as tar:
        names = set(tar.getnames())
    assert {"etc/app/.wh.b.conf", "usr/share/.wh.doc", "var/cache/data/.wh..wh..opq"} <= names
    with tarfile.open(test_images.tars["whiteout-lower"]) as tar:
        lower = set(tar.getnames())
    assert set(WHITEOUT_REMOVED) <= lower
    assert len(test_images.whiteout.read_json()["layers"]) == 2


@pytest.mark.parametrize(
    "name", ["busybox_index", "docker_list", "busybox_arm64", "docker_amd64", "whiteout", "edge"]
)
def test_images_push_unchanged(
    name: str, test_images: ImageSet, registry_basic: RunningRegistry, tmp_path: Path
) -> None:
    image: LayoutImage = getattr(test_images, name)
    repository = f"images/{name.replace('_', '-')}"
    push_image(image, registry_basic, f"{repository}:v1", "alice", tmp_path)
    raw = skopeo_inspect_raw(registry_basic, registry_basic.ref(repository, "v1"), "alice")
    assert sha256(raw) == image.digest
    assert json.loads(raw)["mediaType"] == image.media_type
    if name in ("busybox_index", "docker_list"):
        for child in json.loads(raw)["manifests"]:
            child_raw = skopeo_inspect_raw(
                registry_basic, f"{registry_basic.host}/{repository}@{child['digest']}", "alice"
            )
            assert sha256(child_raw) == child["digest"]


def test_esgz_tool_builds_and_verifies(esgz: Path, test_images: ImageSet, tmp_path: Path) -> None:
    blob = tmp_path / "busybox.esgz"
    built = subprocess.run(
        [str(esgz), "build", str(test_images.tars["busybox-amd64"]), str(blob)],
        capture_output=True,
        text=True,
        check=True,
    )
    summary = json.loads(built.stdout)
    toc = subprocess.run([str(esgz), "toc", str(blob)], capture_output=True, check=True).stdout
    assert "bin/busybox" in {entry["name"] for entry in json.loads(toc)["entries"]}
    verified = subprocess.run([str(esgz), "verify", str(blob), summary["tocDigest"]], capture_output=True)
    assert verified.returncode == 0, verified.stderr
    blob.write_bytes(blob.read_bytes()[:-1] + b"\x01")
    corrupted = subprocess.run([str(esgz), "verify", str(blob), summary["tocDigest"]], capture_output=True)
    assert corrupted.returncode == 1


@pytest.mark.parametrize("registry_name", ["registry_plain", "registry_referrers"])
def test_referrers_api_only_on_referrers_registry(
    registry_name: str, request: pytest.FixtureRequest, test_images: ImageSet, tmp_path: Path
) -> None:
    registry: RunningRegistry = request.getfixturevalue(registry_name)
    layout = tmp_path / "layout"
    shutil.copytree(test_images.layout, layout)
    subject = dataclasses.replace(test_images.busybox_amd64, layout=layout)
    referrer = build_referrer(
        layout, subject, "application/vnd.example.sbom", b"{}", "sbom", "application/json"
    )
    for image in (subject, referrer):
        push_image(image, registry, f"test/referred:{image.tag}", None, tmp_path)
    assert sha256(skopeo_inspect_raw(registry, registry.ref("test/referred", "sbom"))) == referrer.digest

    answer = httpx.get(
        f"{registry.url}/v2/test/referred/referrers/{subject.digest}",
        headers={"Accept": "application/vnd.oci.image.index.v1+json"},
    )
    if registry_name == "registry_plain":  # distribution 2.8: router miss, not an OCI error
        assert answer.status_code == 404
        assert answer.headers["content-type"].startswith("text/plain")
    else:
        assert answer.status_code == 200
        assert [m["digest"] for m in answer.json()["manifests"]] == [referrer.digest]


@pytest.mark.slow
def test_rootfs_image_round_trips_over_tls(
    rootfs_image: tuple[LayoutImage, dict[str, Path]], registry_tls: RunningRegistry, tmp_path: Path
) -> None:
    image, layer_tars = rootfs_image
    with tarfile.open(layer_tars["rootfs-lower"]) as tar:
        assert "usr/bin/bash" in tar.getnames()
    push_image(image, registry_tls, "test/rootfs:v1", "alice", tmp_path)
    skopeo_copy(
        f"docker://{registry_tls.ref('test/rootfs', 'v1')}",
        f"oci:{tmp_path / 'back'}:v1",
        src_registry=registry_tls,
        src_user="reader",
    )
    pulled = {p.name for p in (tmp_path / "back" / "blobs" / "sha256").iterdir()}
    expected = {c["digest"].partition(":")[2] for c in child_descriptors(image)} | {
        image.digest.partition(":")[2]
    }
    assert pulled == expected
