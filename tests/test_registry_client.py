"""The registry client against real docker-registry 2.8 processes (tests/harness): auth, TLS,
manifests, blob transfer, mounts, retries, resumed downloads and the referrers fallback."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness.clients import docker_config, skopeo, skopeo_args
from harness.registry import RunningRegistry
from harness.token_server import TokenServer

from acceld.config import RegistryConfig
from acceld.oci import mediatypes as mt
from acceld.oci.digest import DigestMismatch, sha256_digest
from acceld.oci.models import Descriptor, RawManifest
from acceld.registry.auth import parse_challenge, repository_scope
from acceld.registry.client import RegistryClient, RetryPolicy
from acceld.registry.copy import copy_image
from acceld.registry.errors import (
    AuthenticationError,
    NotFound,
    PermissionDenied,
    RegistryError,
    RegistryUnreachable,
)
from acceld.registry.layout import OCILayout
from acceld.registry.repository import RegistryRepository, fallback_tag

FAST_RETRY = RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.05)


@pytest.fixture(autouse=True)
def _no_ambient_docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker-config"))


def settings(registry: RunningRegistry, user: str | None = None, **overrides: object) -> RegistryConfig:
    values: dict[str, object] = {
        "plain_http": registry.scheme == "http",
        "ca_file": registry.ca_file,
        "username": user,
        "password": registry.users[user] if user else None,
    }
    values.update(overrides)
    return RegistryConfig.model_validate(values)


def client(registry: RunningRegistry, user: str | None = None, **overrides: object) -> RegistryClient:
    return RegistryClient(registry.host, settings(registry, user, **overrides), retry=FAST_RETRY)


def blob(data: bytes, media_type: str = mt.OCI_LAYER_GZIP) -> Descriptor:
    return Descriptor(mediaType=media_type, digest=sha256_digest(data), size=len(data))


async def push_image(repo: RegistryRepository, tag: str | None, layer: bytes | None = None) -> RawManifest:
    """Push a one-layer image of random content built with the client under test."""
    layer = layer if layer is not None else os.urandom(2048)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [sha256_digest(layer)]},
        }
    ).encode()
    layer_desc, config_desc = blob(layer), blob(config, mt.OCI_CONFIG)
    await repo.put_blob(layer_desc, layer)
    await repo.put_blob(config_desc, config)
    manifest = RawManifest.from_bytes(
        json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": mt.OCI_MANIFEST,
                "config": config_desc.to_dict(),
                "layers": [layer_desc.to_dict()],
            }
        ).encode()
    )
    await repo.put_manifest(manifest, tag)
    return manifest


def skopeo_raw(registry: RunningRegistry, reference: str, user: str | None = None) -> bytes:
    return skopeo(
        "inspect", "--raw", *skopeo_args(registry, user), f"docker://{registry.host}/{reference}"
    ).stdout


# -- challenges ---------------------------------------------------------------------------------


def test_parse_challenge_with_several_scopes() -> None:
    challenge = parse_challenge(
        'Bearer realm="http://127.0.0.1:1/token",service="test-registry",'
        'scope="repository:test/other:pull,push repository:test/img:pull",error="insufficient_scope"'
    )
    assert challenge is not None and challenge.scheme == "bearer"
    assert challenge.params["realm"] == "http://127.0.0.1:1/token"
    assert challenge.scopes == ["repository:test/other:pull,push", "repository:test/img:pull"]
    assert challenge.params["error"] == "insufficient_scope"
    basic = parse_challenge('Basic realm="test-realm"')
    assert basic is not None and basic.scheme == "basic" and basic.params == {"realm": "test-realm"}
    assert parse_challenge("") is None


# -- manifests, tags, blobs (no auth) ------------------------------------------------------------


async def test_manifest_roundtrip_tags_and_delete(registry_plain: RunningRegistry) -> None:
    async with client(registry_plain) as c:
        repo = c.repository("client/manifests")
        pushed = await push_image(repo, "v1")
        await repo.put_manifest(pushed, "v2")
        fetched = await repo.get_manifest("v1")
        assert fetched.data == pushed.data and fetched.digest == pushed.digest
        assert fetched.media_type == mt.OCI_MANIFEST
        assert (await repo.get_manifest(pushed.digest)).data == pushed.data
        assert await repo.resolve("v2") == pushed.descriptor()
        assert sorted(await repo.list_tags()) == ["v1", "v2"]
        assert skopeo_raw(registry_plain, "client/manifests:v1") == pushed.data

        await repo.delete_manifest(pushed.digest)
        with pytest.raises(NotFound) as excinfo:
            await repo.get_manifest("v1")
        assert excinfo.value.code == "MANIFEST_UNKNOWN"
        assert f"{registry_plain.host}/client/manifests" in str(excinfo.value)


async def test_missing_tag_and_repository_are_not_found(registry_plain: RunningRegistry) -> None:
    async with client(registry_plain) as c:
        with pytest.raises(NotFound, match=r"manifest nope not found in .*client/none"):
            await c.repository("client/none").get_manifest("nope")
        assert not await c.repository("client/none").has_blob(sha256_digest(b"none"))


@pytest.mark.parametrize(
    ("size", "chunk_size"),
    [(0, None), (1000, None), (300_000, None), (300_000, 64 * 1024)],
    ids=["empty", "monolithic", "streamed-patch", "chunked-patches"],
)
async def test_blob_upload_modes(registry_plain: RunningRegistry, size: int, chunk_size: int | None) -> None:
    data = os.urandom(size)
    desc = blob(data)
    async with client(registry_plain) as c:
        repo = c.repository(f"client/blobs-{chunk_size or 0}")
        repo.monolithic_limit = 100_000  # larger blobs: PATCH, then PUT
        repo.upload_chunk_size = chunk_size  # 64 KiB: five PATCHes, each to the newest Location
        assert await repo.put_blob(desc, data) == "uploaded"
        assert await repo.has_blob(desc.digest)
        assert await repo.put_blob(desc, data) == "exists"
        assert b"".join([chunk async for chunk in repo.blob_chunks(desc)]) == data
    # An independent plain GET sees the same bytes.
    response = httpx.get(f"{registry_plain.url}/v2/client/blobs-{chunk_size or 0}/blobs/{desc.digest}")
    assert response.status_code == 200 and response.content == data


async def test_blob_upload_from_file_and_stream(registry_plain: RunningRegistry, tmp_path: Path) -> None:
    data = os.urandom(200_000)
    desc = blob(data)
    path = tmp_path / "blob"
    path.write_bytes(data)

    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(data), 7777):
            yield data[start : start + 7777]

    async with client(registry_plain) as c:
        from_file, from_stream = c.repository("client/file"), c.repository("client/stream")
        from_file.monolithic_limit = from_stream.monolithic_limit = 10_000
        from_stream.upload_chunk_size = 50_000
        assert await from_file.put_blob(desc, path) == "uploaded"
        assert await from_stream.put_blob(desc, pieces()) == "uploaded"
        target = tmp_path / "fetched"
        await from_stream.fetch_blob(desc, target)
        assert target.read_bytes() == data


async def test_wrong_digest_is_rejected(registry_plain: RunningRegistry) -> None:
    data = os.urandom(100)
    async with client(registry_plain) as c:
        repo = c.repository("client/bad")
        wrong = Descriptor(mediaType=mt.OCI_LAYER, digest=sha256_digest(b"other"), size=100)
        with pytest.raises(RegistryError) as excinfo:
            await repo.put_blob(wrong, data)
        assert excinfo.value.code == "DIGEST_INVALID"
        await repo.put_blob(blob(data), data)
        short = Descriptor(mediaType=mt.OCI_LAYER, digest=sha256_digest(data), size=99)
        with pytest.raises(DigestMismatch):
            [chunk async for chunk in repo.blob_chunks(short)]


async def test_cross_repo_mount_and_fallback_upload(registry_plain: RunningRegistry) -> None:
    data = os.urandom(5000)
    desc = blob(data)
    async with client(registry_plain) as c:
        await c.repository("client/mount-src").put_blob(desc, data)
        assert (
            await c.repository("client/mount-dst").put_blob(desc, data, mount_from="client/mount-src")
            == "mounted"
        )
        # Mounting from a repository without the blob opens an ordinary upload, which is used.
        other = os.urandom(5000)
        result = await c.repository("client/mount-dst").put_blob(
            blob(other), other, mount_from="client/empty"
        )
        assert result == "uploaded"
        assert await c.repository("client/mount-dst").has_blob(blob(other).digest)


# -- faults: retries and resumed downloads --------------------------------------------------------


class FlakyProxy:
    """A TCP proxy in front of a real registry that cuts its first `broken` connections after
    `cut_after` bytes sent in `direction` ("down": responses, "up": requests; 0: closes them right
    away), or answers their first request with `canned` (a raw HTTP response) instead."""

    def __init__(
        self,
        upstream: str,
        broken: int,
        cut_after: int = 0,
        canned: bytes | None = None,
        direction: str = "down",
    ) -> None:
        self.upstream_host, port = upstream.rsplit(":", 1)
        self.upstream_port = int(port)
        self.broken, self.cut_after, self.canned, self.direction = broken, cut_after, canned, direction
        self.connections = 0
        self.bytes_down = 0
        self.host = ""

    async def __aenter__(self) -> FlakyProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.host = f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = self.connections
        self.connections += 1
        limit = self.cut_after if number < self.broken else None
        if limit == 0:
            if self.canned is not None:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(self.canned)
                await writer.drain()
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection(self.upstream_host, self.upstream_port)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, budget: int | None) -> None:
            sent = 0
            try:
                while data := await src.read(65536):
                    if budget is not None and sent + len(data) > budget:
                        data = data[: budget - sent]
                    dst.write(data)
                    await dst.drain()
                    sent += len(data)
                    if dst is writer:
                        self.bytes_down += len(data)
                    if budget is not None and sent >= budget:
                        break
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        up = asyncio.ensure_future(pump(reader, up_writer, limit if self.direction == "up" else None))
        down = asyncio.ensure_future(pump(up_reader, writer, limit if self.direction == "down" else None))
        await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        for task, stream in ((up, up_writer), (down, writer)):
            task.cancel()
            stream.close()


async def test_download_resumes_with_range_after_broken_connection(registry_plain: RunningRegistry) -> None:
    data = os.urandom(1_000_000)
    desc = blob(data)
    async with client(registry_plain) as c:
        await c.repository("client/resume").put_blob(desc, data)
    async with (
        FlakyProxy(registry_plain.host, broken=1, cut_after=300_000) as proxy,
        RegistryClient(proxy.host, RegistryConfig(plain_http=True), retry=FAST_RETRY) as c,
    ):
        fetched = b"".join([chunk async for chunk in c.repository("client/resume").blob_chunks(desc)])
    assert fetched == data
    assert proxy.connections >= 2
    assert proxy.bytes_down < 1_200_000  # the second request asked only for the missing range


async def test_connection_errors_are_retried(registry_plain: RunningRegistry) -> None:
    async with (
        FlakyProxy(registry_plain.host, broken=2, cut_after=0) as proxy,
        RegistryClient(proxy.host, RegistryConfig(plain_http=True), retry=FAST_RETRY) as c,
    ):
        await push_image(c.repository("client/retry"), "v1")
    assert proxy.connections >= 3


async def test_busy_registry_is_retried_after_retry_after(registry_plain: RunningRegistry) -> None:
    busy = (
        b"HTTP/1.1 503 Service Unavailable\r\n"
        b"Retry-After: 0\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    async with (
        FlakyProxy(registry_plain.host, broken=2, canned=busy) as proxy,
        RegistryClient(proxy.host, RegistryConfig(plain_http=True), retry=FAST_RETRY) as c,
    ):
        await push_image(c.repository("client/busy"), "v1")
    assert proxy.connections >= 3
    async with (
        FlakyProxy(registry_plain.host, broken=10, canned=busy) as proxy,
        RegistryClient(proxy.host, RegistryConfig(plain_http=True), retry=FAST_RETRY) as c,
    ):
        with pytest.raises(RegistryError) as excinfo:
            await c.repository("client/busy").get_manifest("v1")
    assert excinfo.value.transient and excinfo.value.status == 503
    assert proxy.connections == FAST_RETRY.attempts  # bounded


async def test_copy_retries_a_blob_whose_upload_broke(
    registry_plain: RunningRegistry, tmp_path: Path
) -> None:
    layout = OCILayout.open(tmp_path / "src", create=True)
    layer = os.urandom(1_000_000)
    config = b"{}"
    await layout.put_blob(blob(layer), layer)
    await layout.put_blob(blob(config, mt.OCI_CONFIG), config)
    manifest = RawManifest.from_bytes(
        json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": mt.OCI_MANIFEST,
                "config": blob(config, mt.OCI_CONFIG).to_dict(),
                "layers": [blob(layer).to_dict()],
            }
        ).encode()
    )
    await layout.put_manifest(manifest, "v1")
    async with (
        FlakyProxy(registry_plain.host, broken=1, cut_after=300_000, direction="up") as proxy,
        RegistryClient(proxy.host, RegistryConfig(plain_http=True), retry=FAST_RETRY) as c,
    ):
        repo = c.repository("client/upload-retry")
        result = await copy_image(layout, "v1", repo, "v1")
        assert result.outcomes[blob(layer).digest] == "uploaded"
    assert proxy.connections >= 2
    async with client(registry_plain) as c:
        repo = c.repository("client/upload-retry")
        assert (await repo.get_manifest("v1")).data == manifest.data
        assert b"".join([chunk async for chunk in repo.blob_chunks(blob(layer))]) == layer


async def test_unreachable_registry_is_a_transient_one_line_error() -> None:
    async with RegistryClient("127.0.0.1:9", RegistryConfig(plain_http=True), retry=FAST_RETRY) as c:
        with pytest.raises(RegistryUnreachable) as excinfo:
            await c.repository("x/y").get_manifest("latest")
    assert excinfo.value.transient
    assert "cannot reach registry 127.0.0.1:9" in str(excinfo.value)
    assert "\n" not in str(excinfo.value)


# -- Basic auth ------------------------------------------------------------------------------------


async def test_basic_auth(registry_basic: RunningRegistry) -> None:
    async with client(registry_basic, "alice") as c:
        pushed = await push_image(c.repository("basic/img"), "v1")
    assert skopeo_raw(registry_basic, "basic/img:v1", "alice") == pushed.data
    async with client(registry_basic, "alice", password="wrong") as c:
        with pytest.raises(AuthenticationError, match="wrong username or password"):
            await c.repository("basic/img").get_manifest("v1")
    async with client(registry_basic) as c:
        with pytest.raises(AuthenticationError, match="no credentials"):
            await c.repository("basic/img").get_manifest("v1")


@pytest.mark.parametrize("split_fields", [False, True])
async def test_docker_config_credentials(
    registry_basic: RunningRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, split_fields: bool
) -> None:
    monkeypatch.setenv(
        "DOCKER_CONFIG", str(docker_config(tmp_path, registry_basic, "alice", split_fields=split_fields))
    )
    async with client(registry_basic) as c:
        await push_image(c.repository("basic/docker-config"), "v1")


# -- Bearer tokens ---------------------------------------------------------------------------------


def token_server(registry: RunningRegistry) -> TokenServer:
    assert registry.tokens is not None
    return registry.tokens


async def test_token_auth_caches_tokens_per_scope(registry_token: RunningRegistry) -> None:
    tokens = token_server(registry_token)
    async with client(registry_token, "alice") as c:
        repo = c.repository("token/cache")
        tokens.clear()
        pushed = await push_image(repo, "v1")
        await repo.get_manifest("v1")
        await repo.get_manifest(pushed.digest)
    requested = [t.requested for t in tokens.issued]
    assert requested.count(("repository:token/cache:pull,push",)) == 1
    assert requested.count(("repository:token/cache:pull",)) == 1
    assert all(t.account == "alice" for t in tokens.issued)
    assert skopeo_raw(registry_token, "token/cache:v1", "alice") == pushed.data


async def test_token_mount_requests_both_scopes(registry_token: RunningRegistry) -> None:
    tokens = token_server(registry_token)
    data = os.urandom(3000)
    async with client(registry_token, "alice") as c:
        await c.repository("token/src").put_blob(blob(data), data)
        tokens.clear()
        assert await c.repository("token/dst").put_blob(blob(data), data, mount_from="token/src") == "mounted"
    assert any(
        set(t.requested) == {"repository:token/dst:pull,push", "repository:token/src:pull"}
        for t in tokens.issued
    )


async def test_insufficient_scope_triggers_a_wider_token(registry_token: RunningRegistry) -> None:
    tokens = token_server(registry_token)
    async with client(registry_token, "alice") as c:
        tokens.clear()
        # Ask for pull only: the registry answers 401 insufficient_scope naming pull,push.
        response = await c.request(
            "POST",
            "/v2/token/wider/blobs/uploads/",
            what="upload",
            scopes=[repository_scope("token/wider", "pull")],
            expect=(202,),
        )
        await c.request(
            "DELETE",
            response.headers["location"],
            what="cancel",
            scopes=[repository_scope("token/wider", "pull", "push")],
            expect=(204,),
        )
    assert tokens.issued[0].requested == ("repository:token/wider:pull",)
    # The registry names the missing actions in its challenge (in no fixed order).
    wider = [set(scope.rsplit(":", 1)[1].split(",")) for scope in tokens.issued[1].requested]
    assert {"pull", "push"} in wider


async def test_pull_only_credentials_cannot_push(registry_token: RunningRegistry) -> None:
    async with client(registry_token, "reader") as c:
        with pytest.raises(PermissionDenied) as excinfo:
            await push_image(c.repository("token/denied"), "v1")
    message = str(excinfo.value)
    assert f"insufficient permission for {registry_token.host}/token/denied" in message
    assert "\n" not in message and not excinfo.value.transient


async def test_token_wrong_password_and_anonymous(registry_token: RunningRegistry) -> None:
    async with client(registry_token, "alice", password="nope") as c:
        with pytest.raises(AuthenticationError, match="wrong username or password"):
            await c.repository("token/x").get_manifest("v1")
    async with client(registry_token, "alice") as c:
        pushed = await push_image(c.repository("public/anon"), "v1")
    async with client(registry_token) as c:
        assert (await c.repository("public/anon").get_manifest("v1")).data == pushed.data
        with pytest.raises(PermissionDenied, match="no credentials configured"):
            await push_image(c.repository("public/anon"), "v2")


async def test_expired_token_is_refreshed(registry_token: RunningRegistry) -> None:
    tokens = token_server(registry_token)
    async with client(registry_token, "alice") as c:
        repo = c.repository("token/expiry")
        await push_image(repo, "v1")
        tokens.expires_in = 2
        try:
            tokens.clear()
            await repo.get_manifest("v1")
            await asyncio.sleep(2.2)
            await repo.get_manifest("v1")
        finally:
            tokens.expires_in = 300
    assert len(tokens.issued) == 2


async def test_identity_token_from_docker_config(
    registry_token: RunningRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = token_server(registry_token)
    refresh = tokens.issue_refresh_token("alice")
    monkeypatch.setenv(
        "DOCKER_CONFIG", str(docker_config(tmp_path, registry_token, None, identity_token=refresh))
    )
    tokens.clear()
    async with client(registry_token) as c:
        await push_image(c.repository("token/identity"), "v1")
    assert tokens.issued and all(t.account == "alice" for t in tokens.issued)


# -- TLS -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("http2", [False, True])
async def test_tls_with_ca_file(registry_tls: RunningRegistry, http2: bool) -> None:
    async with client(registry_tls, "alice", http2=http2) as c:
        repo = c.repository("tls/img")
        repo.monolithic_limit = 100_000  # the layer goes in a streamed PATCH
        pushed = await push_image(repo, f"h2-{http2}".lower(), os.urandom(300_000))
        layer = pushed.manifest().layers[0]
        assert sum([len(chunk) async for chunk in repo.blob_chunks(layer)]) == layer.size
        response = await c.request("GET", "/v2/", scopes=[], what="ping")
        assert response.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
    assert skopeo_raw(registry_tls, f"tls/img:h2-{http2}".lower(), "alice") == pushed.data


async def test_tls_verification_and_no_downgrade(registry_tls: RunningRegistry) -> None:
    async with client(registry_tls, "alice", ca_file=None) as c:
        with pytest.raises(RegistryUnreachable, match="TLS failure") as excinfo:
            await c.repository("tls/img").get_manifest("v1")
        assert not excinfo.value.transient
    async with client(registry_tls, "alice", ca_file=None, insecure=True) as c:
        await push_image(c.repository("tls/insecure"), "v1")
    async with client(registry_tls, "alice", plain_http=True) as c:
        with pytest.raises(RegistryError):
            await c.repository("tls/img").get_manifest("v1")


# -- referrers (distribution 2.8 has no API: fallback tag schema) ---------------------------------


async def test_referrers_through_fallback_tag(registry_plain: RunningRegistry) -> None:
    async with client(registry_plain) as c:
        repo = c.repository("client/referrers")
        subject = await push_image(repo, "v1")
        empty = b"{}"
        await repo.put_blob(blob(empty, mt.OCI_EMPTY), empty)
        referrers = []
        for artifact_type in ("application/vnd.example.sbom", "application/vnd.example.sig"):
            manifest = RawManifest.from_bytes(
                json.dumps(
                    {
                        "schemaVersion": 2,
                        "mediaType": mt.OCI_MANIFEST,
                        "artifactType": artifact_type,
                        "config": blob(empty, mt.OCI_EMPTY).to_dict(),
                        "layers": [blob(empty, mt.OCI_EMPTY).to_dict()],
                        "subject": subject.descriptor().to_dict(),
                        "annotations": {"k": artifact_type},
                    }
                ).encode()
            )
            await repo.put_manifest(manifest)
            await repo.put_manifest(manifest)  # pushing twice must not list it twice
            referrers.append(manifest)

        found = await repo.referrers(subject.digest)
        assert [d.digest for d in found] == [m.digest for m in referrers]
        assert found[0].artifact_type == "application/vnd.example.sbom"
        assert found[0].annotations == {"k": "application/vnd.example.sbom"}
        sigs = await repo.referrers(subject.digest, "application/vnd.example.sig")
        assert [d.digest for d in sigs] == [referrers[1].digest]
        assert await repo.referrers(sha256_digest(b"no subject")) == []

    # The fallback index is a real OCI index under sha256-<hex>, visible to other clients.
    index = json.loads(skopeo_raw(registry_plain, f"client/referrers:{fallback_tag(subject.digest)}"))
    assert index["mediaType"] == mt.OCI_INDEX
    assert [m["digest"] for m in index["manifests"]] == [m.digest for m in referrers]


async def test_referrers_api_and_upload_quirks_of_go_containerregistry(
    registry_referrers: RunningRegistry,
) -> None:
    """A registry with the referrers API, answering PATCH with 204 and relative Locations."""
    async with client(registry_referrers) as c:
        repo = c.repository("client/api")
        repo.monolithic_limit = 1000  # exercise the PATCH path (answered 204 with a relative Location)
        subject = await push_image(repo, "v1", os.urandom(50_000))

        empty = b"{}"
        await repo.put_blob(blob(empty, mt.OCI_EMPTY), empty)
        referrer = RawManifest.from_bytes(
            json.dumps(
                {
                    "schemaVersion": 2,
                    "mediaType": mt.OCI_MANIFEST,
                    "artifactType": "application/vnd.example.sbom",
                    "config": blob(empty, mt.OCI_EMPTY).to_dict(),
                    "layers": [blob(empty, mt.OCI_EMPTY).to_dict()],
                    "subject": subject.descriptor().to_dict(),
                }
            ).encode()
        )
        # Pushed by a plain PUT, so no fallback tag exists: only the referrers API can find it.
        response = httpx.put(
            f"{registry_referrers.url}/v2/client/api/manifests/{referrer.digest}",
            content=referrer.data,
            headers={"Content-Type": mt.OCI_MANIFEST},
        )
        assert response.status_code == 201
        assert await repo.list_tags() == ["v1"]
        found = await repo.referrers(subject.digest)
        assert referrer.digest in [d.digest for d in found]
        # This registry ignores the artifactType filter (no OCI-Filters-Applied): acceld filters itself.
        assert await repo.referrers(subject.digest, "application/vnd.example.other") == []


# -- Docker credential helpers ---------------------------------------------------------------------

_HELPER = """#!{python}
import json, sys
secrets = json.loads({secrets!r})
assert sys.argv[1:] == ["get"], sys.argv
server = sys.stdin.read().strip()
if server not in secrets:
    print("credentials not found in native keychain")
    sys.exit(1)
username, secret = secrets[server]
print(json.dumps({{"ServerURL": server, "Username": username, "Secret": secret}}))
"""


def credential_helper(bin_dir: Path, name: str, secrets: dict[str, tuple[str, str]]) -> None:
    """A `docker-credential-NAME` program answering Docker's `get` protocol from `secrets`."""
    bin_dir.mkdir(exist_ok=True)
    program = bin_dir / f"docker-credential-{name}"
    program.write_text(_HELPER.format(python=sys.executable, secrets=json.dumps(secrets)))
    program.chmod(0o755)


def helper_config(tmp_path: Path, config: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    directory = tmp_path / "helper-config"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(config))
    monkeypatch.setenv("DOCKER_CONFIG", str(directory))
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")


@pytest.mark.parametrize("where", ["credsStore", "credHelpers"])
async def test_docker_credential_helpers(
    registry_basic: RunningRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    host = registry_basic.host
    credential_helper(tmp_path / "bin", "acceldtest", {host: ("alice", registry_basic.users["alice"])})
    credential_helper(tmp_path / "bin", "empty", {})
    config: dict[str, Any] = (
        {"credsStore": "acceldtest"}
        if where == "credsStore"
        else {"credsStore": "empty", "credHelpers": {host: "acceldtest"}}  # the host's helper wins
    )
    helper_config(tmp_path, config, monkeypatch)
    async with client(registry_basic) as c:
        await push_image(c.repository("basic/helper"), where.lower())


async def test_credential_helper_identity_token_and_failures(
    registry_token: RunningRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = token_server(registry_token)
    refresh = tokens.issue_refresh_token("alice")
    credential_helper(tmp_path / "bin", "tokens", {registry_token.host: ("<token>", refresh)})
    helper_config(tmp_path, {"credHelpers": {registry_token.host: "tokens"}}, monkeypatch)
    tokens.clear()
    async with client(registry_token) as c:
        await push_image(c.repository("token/helper"), "v1")
    assert tokens.issued and all(t.account == "alice" for t in tokens.issued)

    (tmp_path / "helper-config" / "config.json").write_text(json.dumps({"credsStore": "missing"}))
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "from acceld.cli import main; main()",
            "inspect",
            f"{registry_token.host}/x:y",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: Docker credential helper docker-credential-missing not found in PATH"
    ]
