"""The Harbor contract, end to end with a real `acceld serve` and docker-registry: every result linked
(indexes too), every tag of a digest converted (one conversion, one manifest PUT per further tag),
no converted tag rolled back to an older image, referrers fallback entries never lost."""

from __future__ import annotations

import asyncio
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
    cloudevent_payload,
    default_payload,
    post_event,
    resource,
    run_service,
    service_config,
    tasks_of,
    wait_finished,
    wait_for,
    write_config,
)

from acceld.config import AcceldConfig, RegistryConfig
from acceld.convert.api import make_driver
from acceld.convert.locks import machine_lock
from acceld.oci import mediatypes as mt
from acceld.oci.digest import sha256_digest
from acceld.oci.models import Descriptor, Manifest, RawManifest
from acceld.registry.repository import fallback_tag
from acceld.registry.stores import Stores

SUFFIX = make_driver("estargz", {}).tag_suffix
ACCEPT = ", ".join(
    (
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    )
)


def push(image: Any, registry: RunningRegistry, reference: str) -> None:
    skopeo_copy(image.ref, f"docker://{registry.host}/{reference}", dest_registry=registry)


def manifest(registry: RunningRegistry, repository: str, ref: str) -> httpx.Response:
    return httpx.get(f"{registry.url}/v2/{repository}/manifests/{ref}", headers={"Accept": ACCEPT})


def subject_of(registry: RunningRegistry, repository: str, ref: str) -> str:
    response = manifest(registry, repository, ref)
    assert response.status_code == 200, (ref, response.status_code)
    return str(response.json()["subject"]["digest"])


def fallback_entries(registry: RunningRegistry, repository: str, subject: str) -> set[str]:
    response = manifest(registry, repository, fallback_tag(subject))
    return {m["digest"] for m in response.json()["manifests"]} if response.status_code == 200 else set()


@pytest.fixture(scope="module")
def config_file(registry_plain: RunningRegistry, tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("service-contract")
    config = service_config(
        work / "data",
        {registry_plain.host: {"plain_http": True}},
        rules=[
            {
                "name": "contract",
                "repositories": ["contract/**"],
                "drivers": [{"name": "estargz"}],
                "delete_converted": True,
            }
        ],
        workers={"concurrency": 2},
    )
    return write_config(work / "acceld.yml", config)


@pytest.fixture(scope="module")
def service(config_file: Path) -> Iterator[ServiceProcess]:
    with run_service(config_file, config_file.parent / "serve.log") as running:
        yield running


@pytest.fixture
def api(service: ServiceProcess) -> Iterator[httpx.Client]:
    with service.api() as client:
        yield client


def test_converted_index_is_linked_and_deleted_with_its_source(
    service: ServiceProcess, api: httpx.Client, registry_plain: RunningRegistry, test_images: ImageSet
) -> None:
    index = test_images.busybox_index
    push(index, registry_plain, "contract/multi:v1")
    res = [resource(registry_plain.host, "contract/multi", index.digest, "v1")]
    reply = post_event(service.url, cloudevent_payload("PUSH_ARTIFACT", res), cloudevents=True)
    task = wait_finished(api, reply.json()["tasks"][0]["id"])
    assert task["status"] == "succeeded", task

    converted = manifest(registry_plain, "contract/multi", f"v1{SUFFIX}").json()
    assert converted["subject"] == index.descriptor()
    assert (
        converted["annotations"]["io.goharbor.artifact.v1alpha1.acceleration.source.digest"] == index.digest
    )
    sources = {c["digest"] for c in index.read_json()["manifests"]}
    children = [c["digest"] for c in converted["manifests"]]
    assert {subject_of(registry_plain, "contract/multi", child) for child in children} == sources
    assert task["target_digest"] in fallback_entries(registry_plain, "contract/multi", index.digest)

    # A converted index is an accessory, not a source: its own push event is not converted again.
    own = [resource(registry_plain.host, "contract/multi", task["target_digest"])]
    again = post_event(service.url, cloudevent_payload("PUSH_ARTIFACT", own), cloudevents=True)
    skipped = wait_finished(api, again.json()["tasks"][0]["id"])
    assert skipped["status"] == "skipped" and "subject" in skipped["error"], skipped

    deleted = post_event(service.url, cloudevent_payload("DELETE_ARTIFACT", res), cloudevents=True)
    deletion = wait_finished(api, deleted.json()["tasks"][0]["id"])
    assert deletion["status"] == "succeeded", deletion
    for digest in (task["target_digest"], *children):
        assert manifest(registry_plain, "contract/multi", digest).status_code == 404, digest


def test_every_tag_of_one_digest_is_converted_once(
    service: ServiceProcess,
    api: httpx.Client,
    registry_plain: RunningRegistry,
    test_images: ImageSet,
    config_file: Path,
) -> None:
    image = test_images.busybox_amd64
    tags = ("v1.2.3", "v1.2", "latest")
    for tag in tags:
        push(image, registry_plain, f"contract/tags:{tag}")
    payloads = [
        default_payload("PUSH_ARTIFACT", [resource(registry_plain.host, "contract/tags", image.digest, tag)])
        for tag in tags
    ]
    accepted = [post_event(service.url, payload).json()["tasks"][0] for payload in payloads]
    assert [t["kind"] for t in accepted] == ["convert", "tag", "tag"]
    assert all(t["created"] for t in accepted)
    finished = [wait_finished(api, t["id"]) for t in accepted]
    assert [t["status"] for t in finished] == ["succeeded"] * 3, finished
    conversion = finished[0]
    assert conversion["layers_converted"] + conversion["layers_cached"] == 1
    assert all(t["parent_id"] == conversion["id"] for t in finished[1:])
    for tag, task in zip(tags, finished, strict=True):
        converted = manifest(registry_plain, "contract/tags", f"{tag}{SUFFIX}")
        assert converted.headers["docker-content-digest"] == conversion["target_digest"]
        assert task["target"] == f"{registry_plain.host}/contract/tags:{tag}{SUFFIX}"

    # Redeliveries change nothing: the same tasks, still succeeded, no new conversion.
    for payload, first in zip(payloads, accepted, strict=True):
        again = post_event(service.url, payload).json()["tasks"][0]
        assert (again["id"], again["status"], again["created"]) == (first["id"], "succeeded", False)
    assert [t["status"] for t in tasks_of(api, repository="contract/tags")] == ["succeeded"] * 3

    # Tags added without webhooks are found by sync: tag tasks again, nothing converted twice.
    for tag in ("stable", "v1"):
        push(image, registry_plain, f"contract/tags:{tag}")
    result = subprocess.run(
        acceld_command("sync", "--config", str(config_file)), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr

    def settled() -> list[dict[str, Any]] | None:
        found = tasks_of(api, repository="contract/tags")
        return found if len(found) == 5 and all(t["status"] == "succeeded" for t in found) else None

    synced = wait_for(settled, what="the synced tags")
    assert sorted(t["kind"] for t in synced) == ["convert"] + ["tag"] * 4
    assert {t["id"] for t in synced} >= {t["id"] for t in finished}
    for tag in (*tags, "stable", "v1"):
        converted = manifest(registry_plain, "contract/tags", f"{tag}{SUFFIX}")
        assert converted.headers["docker-content-digest"] == conversion["target_digest"], tag
    again = subprocess.run(
        acceld_command("sync", "--config", str(config_file)), capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0 and "requeued: 0" in again.stdout, again
    assert tasks_of(api, repository="contract/tags") == synced  # nothing ran again, nothing flipped


def test_late_event_never_rolls_a_converted_tag_back(
    service: ServiceProcess, api: httpx.Client, registry_plain: RunningRegistry, test_images: ImageSet
) -> None:
    older, newer = test_images.busybox_amd64, test_images.busybox_arm64
    push(older, registry_plain, "contract/order:v1")
    push(newer, registry_plain, "contract/order:v1")

    def deliver(digest: str) -> dict[str, Any]:
        res = [resource(registry_plain.host, "contract/order", digest, "v1")]
        return wait_finished(
            api, post_event(service.url, default_payload("PUSH_ARTIFACT", res)).json()["tasks"][0]["id"]
        )

    current = deliver(newer.digest)
    assert current["status"] == "succeeded" and current["note"] is None, current
    late = deliver(older.digest)  # Harbor redelivers the first push's event after the second's
    assert late["status"] == "succeeded", late
    assert "now points at" in late["note"] and newer.digest in late["note"]
    assert late["target"] == f"{registry_plain.host}/contract/order@{late['target_digest']}"
    assert subject_of(registry_plain, "contract/order", f"v1{SUFFIX}") == newer.digest
    # the older image's result is still linked to it (Harbor lists it as its accessory)
    assert late["target_digest"] in fallback_entries(registry_plain, "contract/order", older.digest)

    # A further tag pushed as the older digest, whose tag moved on too, is not tagged either.
    push(older, registry_plain, "contract/order:v0")
    push(newer, registry_plain, "contract/order:v0")
    res = [resource(registry_plain.host, "contract/order", older.digest, "v0")]
    tag_task = post_event(service.url, default_payload("PUSH_ARTIFACT", res)).json()["tasks"][0]
    assert tag_task["kind"] == "tag"
    skipped = wait_finished(api, tag_task["id"])
    assert skipped["status"] == "skipped" and "now points at" in skipped["error"], skipped
    assert manifest(registry_plain, "contract/order", f"v0{SUFFIX}").status_code == 404


def test_concurrent_conversions_of_one_source_are_all_referrers(
    registry_plain: RunningRegistry, test_images: ImageSet, tmp_path: Path
) -> None:
    """Four results with one subject, pushed at once to a registry without the referrers API."""
    image = test_images.edge
    push(image, registry_plain, "contract/four:v1")
    drivers = [
        {"name": "estargz"},
        {"name": "zstdchunked"},
        {"name": "nydus"},
        {"name": "estargz", "options": {"chunk_size": 65536}},  # same tag as the first: last push wins
    ]
    config = service_config(
        tmp_path / "data",
        {registry_plain.host: {"plain_http": True}},
        rules=[{"name": "four", "drivers": drivers}],
        workers={"concurrency": 4},
    )
    config_file = write_config(tmp_path / "acceld.yml", config)
    with run_service(config_file, tmp_path / "serve.log") as running, running.api() as api:
        res = [resource(registry_plain.host, "contract/four", image.digest, "v1")]
        reply = post_event(running.url, default_payload("PUSH_ARTIFACT", res))
        finished = [wait_finished(api, t["id"], timeout=300) for t in reply.json()["tasks"]]
    assert [t["status"] for t in finished] == ["succeeded"] * 4, finished
    results = {t["target_digest"] for t in finished}
    assert len(results) == 4
    assert results <= fallback_entries(registry_plain, "contract/four", image.digest)


async def test_fallback_index_keeps_every_concurrent_entry(
    registry_plain: RunningRegistry, tmp_path: Path
) -> None:
    """Four writers of one subject's fallback index at once, 20 times: each run lists all four."""
    config = AcceldConfig(registries={registry_plain.host: RegistryConfig(plain_http=True)})
    repository = "contract/fallback"
    async with Stores(config) as stores:
        repo = stores.client(registry_plain.host).repository(repository)
        config_blob = b"{}"
        config_desc = Descriptor(mediaType=mt.OCI_CONFIG, digest=sha256_digest(config_blob), size=2)
        await repo.put_blob(config_desc, config_blob)

    def referrer(subject: Descriptor, n: int) -> RawManifest:
        body = Manifest(
            mediaType=mt.OCI_MANIFEST,
            config=config_desc,
            layers=[],
            subject=subject,
            annotations={"n": str(n)},
        )
        return RawManifest.from_bytes(body.to_json(), mt.OCI_MANIFEST)

    async def write(subject: Descriptor, n: int) -> None:
        async with Stores(config) as own:  # one client each, as separate job processes have
            repo = own.client(registry_plain.host).repository(repository)
            async with machine_lock(
                tmp_path / "locks", f"{registry_plain.host}/{repository}@{subject.digest}"
            ):
                await repo.put_manifest(referrer(subject, n))

    for run in range(20):
        subject = Descriptor(
            mediaType=mt.OCI_MANIFEST, digest=sha256_digest(f"subject {run}".encode()), size=1
        )
        await asyncio.gather(*(write(subject, n) for n in range(4)))
        expected = {referrer(subject, n).digest for n in range(4)}
        assert fallback_entries(registry_plain, repository, subject.digest) == expected, run
