"""Target mapping (results in another repository, e.g. for proxy-cache projects) and `acceld prune`,
with a real `acceld serve`, real docker-registry instances and token auth."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness.clients import skopeo_copy
from harness.registry import RunningRegistry
from harness.testimages import ImageSet
from service_helpers import (
    ServiceProcess,
    acceld_command,
    default_payload,
    post_event,
    resource,
    run_service,
    service_config,
    wait_finished,
    write_config,
)

from acceld.convert.api import make_driver

SUFFIX = make_driver("estargz", {}).tag_suffix
SOURCE_DIGEST = "io.goharbor.artifact.v1alpha1.acceleration.source.digest"
SOURCE_REPOSITORY = "io.acceld.source.repository"
ACCEPT = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json"


class Registry:
    """Reads a registry as `alice` (token auth)."""

    def __init__(self, registry: RunningRegistry) -> None:
        self.registry = registry
        self.client = httpx.Client(auth=_TokenAuth(registry), timeout=30)

    def manifest(self, repository: str, ref: str) -> httpx.Response:
        return self.client.get(
            f"{self.registry.url}/v2/{repository}/manifests/{ref}", headers={"Accept": ACCEPT}
        )

    def delete(self, repository: str, digest: str) -> None:
        response = self.client.delete(f"{self.registry.url}/v2/{repository}/manifests/{digest}")
        assert response.status_code == 202, response.text


class _TokenAuth(httpx.Auth):
    def __init__(self, registry: RunningRegistry) -> None:
        self.registry = registry

    def auth_flow(self, request: httpx.Request) -> Iterator[httpx.Request]:
        response = yield request
        if response.status_code != 401:
            return
        challenge = response.headers["www-authenticate"].removeprefix("Bearer ")
        params = dict(part.split("=", 1) for part in challenge.split(","))
        params = {k: v.strip('"') for k, v in params.items()}
        token = httpx.get(
            params.pop("realm"),
            params=params,
            auth=("alice", self.registry.users["alice"]),
            timeout=30,
        ).json()["token"]
        request.headers["Authorization"] = f"Bearer {token}"
        yield request


def push(image: Any, registry: RunningRegistry, reference: str) -> None:
    skopeo_copy(image.ref, f"docker://{registry.host}/{reference}", dest_registry=registry, dest_user="alice")


@pytest.fixture(scope="module")
def config_file(registry_token: RunningRegistry, tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("service-mapping")
    mirror = {"plain_http": True, "username": "mirror", "password": registry_token.users["mirror"]}
    rules = [
        {
            "name": "proxy-cache",
            "repositories": ["proxy/app"],  # literal: a robot account cannot list the catalog
            "drivers": [{"name": "estargz"}],
            "delete_converted": True,
            "target": {"repository": "{project}-accel/{name}"},
        },
        {"name": "mirror-side", "repositories": ["proxy-accel/app"], "drivers": [{"name": "estargz"}]},
    ]
    config = service_config(work / "data", {registry_token.host: mirror}, rules=rules)
    return write_config(work / "acceld.yml", config)


@pytest.fixture(scope="module")
def service(config_file: Path) -> Iterator[ServiceProcess]:
    with run_service(config_file, config_file.parent / "serve.log") as running:
        yield running


def test_proxy_cache_images_convert_into_the_mapped_repository(
    service: ServiceProcess, registry_token: RunningRegistry, test_images: ImageSet, config_file: Path
) -> None:
    registry = Registry(registry_token)
    host = registry_token.host
    image, other = test_images.busybox_amd64, test_images.busybox_arm64
    push(image, registry_token, "proxy/app:v1")
    push(image, registry_token, "proxy/app:stable")
    push(other, registry_token, "proxy/app:v2")

    def event(kind: str, digest: str, tag: str) -> dict[str, Any]:
        reply = post_event(service.url, default_payload(kind, [resource(host, "proxy/app", digest, tag)]))
        assert reply.status_code == 202, reply.text
        with service.api() as api:
            return wait_finished(api, reply.json()["tasks"][0]["id"])

    converted = event("PUSH_ARTIFACT", image.digest, "v1")
    assert converted["status"] == "succeeded", converted
    assert converted["destination"] == f"{host}/proxy-accel/app"
    assert converted["target"] == f"{host}/proxy-accel/app:v1{SUFFIX}"
    result = registry.manifest("proxy-accel/app", f"v1{SUFFIX}").json()
    assert "subject" not in result  # `subject` must be in the same repository
    assert result["annotations"][SOURCE_DIGEST] == image.digest
    assert result["annotations"][SOURCE_REPOSITORY] == f"{host}/proxy/app"
    assert all(
        "containerd.io/snapshot/stargz/toc.digest" in layer["annotations"] for layer in result["layers"]
    )
    assert registry.manifest("proxy/app", f"v1{SUFFIX}").status_code == 404  # nothing pushed to the source

    tagged = event("PUSH_ARTIFACT", image.digest, "stable")
    assert (tagged["kind"], tagged["status"]) == ("tag", "succeeded"), tagged
    stable = registry.manifest("proxy-accel/app", f"stable{SUFFIX}")
    assert stable.headers["docker-content-digest"] == converted["target_digest"]

    # The mapped repository's own pushes are recognised as converted images, not converted again.
    looped = post_event(
        service.url,
        default_payload(
            "PUSH_ARTIFACT", [resource(host, "proxy-accel/app", converted["target_digest"], "copy")]
        ),
    )
    with service.api() as api:
        skipped = wait_finished(api, looped.json()["tasks"][0]["id"])
    assert skipped["status"] == "skipped" and SOURCE_DIGEST in skipped["error"], skipped

    deleted = event("DELETE_ARTIFACT", image.digest, "v1")
    assert deleted["status"] == "succeeded" and converted["target_digest"] in deleted["target"], deleted
    assert registry.manifest("proxy-accel/app", converted["target_digest"]).status_code == 404

    # A source deleted without an event: `acceld prune` finds the mapped result and removes only it.
    second = event("PUSH_ARTIFACT", other.digest, "v2")
    assert second["status"] == "succeeded", second
    registry.delete("proxy/app", other.digest)

    def prune(*flags: str) -> str:
        done = subprocess.run(
            acceld_command("prune", "--config", str(config_file), *flags),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    listed = prune()
    assert second["target_digest"] in listed and "dry run" in listed
    assert registry.manifest("proxy-accel/app", second["target_digest"]).status_code == 200
    assert "orphans: 1" in prune("--yes")
    assert registry.manifest("proxy-accel/app", second["target_digest"]).status_code == 404
    assert "orphans: 0" in prune()


def test_prune_removes_results_whose_source_is_gone_and_nothing_else(
    registry_plain: RunningRegistry, test_images: ImageSet, tmp_path: Path
) -> None:
    host = registry_plain.host
    kept, gone = test_images.busybox_amd64, test_images.busybox_arm64
    skopeo_copy(kept.ref, f"docker://{host}/prune/app:kept", dest_registry=registry_plain)
    skopeo_copy(gone.ref, f"docker://{host}/prune/app:gone", dest_registry=registry_plain)

    def acceld(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(acceld_command(*args), capture_output=True, text=True, timeout=300)

    results = {}
    for name, image in (("kept", kept), ("gone", gone)):
        tagged = acceld("convert", f"{host}/prune/app:{name}", "-d", "estargz", "--plain-http")
        untagged = acceld("convert", f"{host}/prune/app@{image.digest}", "-d", "nydus", "--plain-http")
        assert tagged.returncode == 0 and untagged.returncode == 0, tagged.stderr + untagged.stderr
        results[name] = (tagged.stdout.strip().rsplit("@", 1)[1], untagged.stdout.strip().rsplit("@", 1)[1])
    httpx.delete(f"{registry_plain.url}/v2/prune/app/manifests/{gone.digest}").raise_for_status()

    rules = [{"name": "prune", "repositories": ["prune/app"], "drivers": [{"name": "estargz"}]}]
    config = service_config(tmp_path / "data", {host: {"plain_http": True}}, rules=rules)
    config_file = write_config(tmp_path / "acceld.yml", config)
    dry = subprocess.run(
        acceld_command("prune", "--config", str(config_file)), capture_output=True, text=True
    )
    assert dry.returncode == 0, dry.stderr
    for digest in results["gone"]:
        assert digest in dry.stdout
    assert not any(digest in dry.stdout for digest in results["kept"])

    done = subprocess.run(
        acceld_command("prune", "--config", str(config_file), "--yes"), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr

    def status(ref: str) -> int:
        return httpx.get(
            f"{registry_plain.url}/v2/prune/app/manifests/{ref}", headers={"Accept": ACCEPT}
        ).status_code

    assert [status(d) for d in results["gone"]] == [404, 404]
    assert [status(d) for d in results["kept"]] == [200, 200]
    assert status(f"kept{SUFFIX}") == 200 and status(kept.digest) == 200
