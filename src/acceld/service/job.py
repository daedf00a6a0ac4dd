"""One task attempt in its own process: `python -m acceld.service.job`.

The worker pool writes a `JobSpec` as one JSON line to stdin and keeps stdin open; when the
server dies the pipe closes and the job exits, so a killed server leaves no conversion behind.
The `JobResult` is written as JSON to the original stdout; everything else goes to stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from acceld.config import AcceldConfig, RegistryConfig
from acceld.convert.api import ConversionRequest, ConvertOptions, convert_image_sync, make_driver
from acceld.convert.errors import NotApplicableError
from acceld.errors import AcceldError
from acceld.formats.driver import AnyDriver
from acceld.formats.limits import DEFAULT_LIMITS, Limits
from acceld.lifeline import die_with_parent, exit_when_hung_up
from acceld.oci import mediatypes as mt
from acceld.registry.errors import NotFound
from acceld.registry.repository import RegistryRepository
from acceld.registry.stores import Stores
from acceld.service import artifacts

MAX_INDEX_SCAN_TAGS = 1000  # tags read when looking for the index of a digest-only push


class JobSpec(BaseModel):
    kind: Literal["convert", "delete", "tag"]
    registry: str
    repository: str
    tag: str | None
    source_digest: str | None
    driver: str
    options: dict[str, Any]
    platforms: list[str]
    registries: dict[str, RegistryConfig]
    limits: Limits = DEFAULT_LIMITS
    cache_dir: Path | None = None
    known_targets: list[str] = []  # delete: digests of earlier results of this source
    recent_tags: list[str] = []  # digest-only convert: tags pushed to the repository lately, newest first
    converted_digest: str | None = None  # tag: the result of the conversion this tag task points at
    destination: str | None = None  # `registry/repository` of the results when a rule maps them elsewhere

    @property
    def target_repository(self) -> str:
        """Where the results are: the mapped repository, else the source repository."""
        return self.destination or f"{self.registry}/{self.repository}"

    def target_repo(self, stores: Stores) -> RegistryRepository:
        return artifacts.destination_repository(stores, self.target_repository)


class JobResult(BaseModel):
    status: Literal["succeeded", "skipped", "failed"]
    transient: bool = False
    reason: str | None = None
    source_digest: str | None = None
    target: str | None = None
    target_digest: str | None = None
    source_size: int | None = None
    target_size: int | None = None
    seconds: float | None = None
    layers_converted: int | None = None
    layers_cached: int | None = None
    note: str | None = None


def run(spec: JobSpec) -> JobResult:
    """Run one attempt; expected failures become a failed JobResult (transient or not)."""
    try:
        if spec.kind == "delete":
            return asyncio.run(_delete(spec))
        if spec.kind == "tag":
            return asyncio.run(_tag(spec))
        return _convert(spec)
    except AcceldError as exc:
        return JobResult(status="failed", transient=exc.transient, reason=str(exc))
    except Exception as exc:  # a bug or an unwrapped library error: retried up to the attempt limit
        traceback.print_exc()
        return JobResult(
            status="failed", transient=True, reason=f"internal error: {type(exc).__name__}: {exc}"
        )


def _convert(spec: JobSpec) -> JobResult:
    driver = make_driver(spec.driver, spec.options)
    decision = asyncio.run(_check_source(spec, driver))
    if decision.status != "succeeded" or decision.target_digest is not None:
        return decision
    digest = decision.source_digest
    assert digest is not None
    tag = f":{spec.tag}" if spec.tag else ""
    target = None
    if spec.destination:  # digest-only sources go there untagged, as into the source repository
        target = spec.destination + (f":{spec.tag}{driver.tag_suffix}" if spec.tag else "")
    request = ConversionRequest(
        source=f"{spec.registry}/{spec.repository}{tag}@{digest}",
        target=target,
        driver=spec.driver,
        options=spec.options,
        platforms=spec.platforms or None,
        link_subject=spec.destination is None,
    )
    options = ConvertOptions(cache_dir=spec.cache_dir)
    try:
        config = AcceldConfig(registries=spec.registries, limits=spec.limits)
        result = convert_image_sync(request, config, options)
    except NotApplicableError as exc:
        return JobResult(status="skipped", source_digest=digest, reason=str(exc))
    return JobResult(
        status="succeeded",
        source_digest=result.source_digest,
        target=result.target,
        target_digest=result.target_digest,
        source_size=result.source_size,
        target_size=result.target_size,
        seconds=result.seconds,
        layers_converted=result.layers_converted,
        layers_cached=result.layers_cached,
        note="; ".join(note for note in (result.untagged, *result.warnings) if note) or None,
    )


async def _check_source(spec: JobSpec, driver: AnyDriver) -> JobResult:
    """Loop guard and multi-arch handling before converting; `succeeded` without a target means:
    go ahead; with one: the converted tag already holds a conversion of this source."""
    tag_suffix = driver.tag_suffix
    async with Stores(AcceldConfig(registries=spec.registries)) as stores:
        repo = stores.client(spec.registry).repository(spec.repository)
        ref = spec.source_digest or spec.tag
        assert ref is not None
        source = await artifacts.inspect_source(repo, ref, [driver])
        digest = source.raw.digest
        if source.accelerated:
            return JobResult(
                status="skipped", source_digest=digest, reason=f"not converted: {source.accelerated}"
            )
        if spec.tag is None and source.raw.is_manifest:
            parent = await artifacts.parent_index(
                repo,
                digest,
                spec.recent_tags,
                lambda t: t.endswith(tag_suffix) or t.startswith("sha256-"),
                MAX_INDEX_SCAN_TAGS,
            )
            if parent is not None:
                return JobResult(
                    status="skipped",
                    source_digest=digest,
                    reason=f"part of the index {spec.repository}:{parent}, converted with it",
                )
        target_repo = spec.target_repo(stores)
        if spec.tag:
            existing = await artifacts.converted_counterpart(target_repo, source.raw, spec.tag + tag_suffix)
            if existing is not None:
                return _already_converted(
                    digest, existing, f"{spec.target_repository}:{spec.tag}{tag_suffix}"
                )
        existing = await artifacts.referrer_result(
            target_repo, repo, source.raw, driver, spec.platforms or None
        )
        if existing is not None:
            return _already_converted(digest, existing, f"{spec.target_repository}@{existing}")
        return JobResult(status="succeeded", source_digest=digest)


def _already_converted(source_digest: str, target_digest: str, target: str) -> JobResult:
    return JobResult(
        status="succeeded",
        source_digest=source_digest,
        target_digest=target_digest,
        target=target,
        note="already converted",
    )


async def _tag(spec: JobSpec) -> JobResult:
    """Point `<tag><suffix>` at the existing conversion of the digest the tag was pushed as (one
    manifest PUT), unless the tag has moved on since: a converted tag never goes back to an older image."""
    assert spec.tag is not None and spec.source_digest is not None and spec.converted_digest is not None
    driver = make_driver(spec.driver, spec.options)
    target_tag = spec.tag + driver.tag_suffix
    async with Stores(AcceldConfig(registries=spec.registries)) as stores:
        repo = stores.client(spec.registry).repository(spec.repository)
        try:
            current = (await repo.resolve(spec.tag)).digest
        except NotFound:
            current = None
        if current != spec.source_digest:
            where = f"now points at {current}" if current else "was deleted"
            return JobResult(
                status="skipped",
                source_digest=spec.source_digest,
                reason=f"not tagged {target_tag}: {spec.tag} {where}",
            )
        target_repo = spec.target_repo(stores)
        try:
            converted = await target_repo.get_manifest(spec.converted_digest)
        except NotFound:
            return JobResult(
                status="failed",
                source_digest=spec.source_digest,
                reason=f"the converted image {spec.converted_digest} no longer exists: convert again",
            )
        await target_repo.put_manifest(converted, target_tag)
    return JobResult(
        status="succeeded",
        source_digest=spec.source_digest,
        target=f"{spec.target_repository}:{target_tag}",
        target_digest=converted.digest,
    )


async def _delete(spec: JobSpec) -> JobResult:
    """Delete the converted images of a deleted source: known results, the suffixed tag, referrers.
    A converted index goes with its children."""
    assert spec.source_digest is not None
    driver = make_driver(spec.driver, spec.options)
    async with Stores(AcceldConfig(registries=spec.registries)) as stores:
        repo = spec.target_repo(stores)
        targets = set(spec.known_targets)
        if spec.destination is None:  # results elsewhere are no referrers of the source
            targets.update(await _referrers_of_format(repo, spec.source_digest, driver))
        if spec.tag:
            try:
                target = await repo.get_manifest(spec.tag + driver.tag_suffix)
                subject = target.subject()
                named = subject.digest if subject else artifacts.source_digest_annotation(target)
                if named == spec.source_digest:
                    targets.add(target.digest)
            except NotFound:
                pass
        deleted = []
        for digest in sorted(targets):
            try:
                raw = await repo.get_manifest(digest)
                children = [d.digest for d in raw.index().manifests] if raw.is_index else []
                await repo.delete_manifest(digest)
                deleted.append(digest)
            except NotFound:
                continue
            for child in children:
                with contextlib.suppress(NotFound):
                    await repo.delete_manifest(child)
                    deleted.append(child)
    return JobResult(
        status="succeeded",
        source_digest=spec.source_digest,
        target=", ".join(deleted) or None,
        reason=None if deleted else "no converted image found",
    )


async def _referrers_of_format(repo: RegistryRepository, digest: str, driver: AnyDriver) -> list[str]:
    """Referrers of `digest` that are this driver's output (an index is judged by its first child)."""
    found = []
    for desc in await repo.referrers(digest):
        try:
            raw = await repo.get_manifest(desc.digest)
            if raw.is_index:
                children = [d for d in raw.index().manifests if mt.is_manifest(d.media_type)]
                if not children:
                    continue
                child = await repo.get_manifest(children[0].digest)
            else:
                child = raw
        except NotFound:
            continue
        if child.is_manifest and artifacts.made_by(child.manifest(), driver):
            found.append(desc.digest)
    return found


def main() -> None:
    result_out = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints must not corrupt the result
    line = sys.stdin.readline()
    # The server holds stdin open: when it closes (the server died), this job and every process
    # it started (its process group) go at once; the kernel kills it too should the server die.
    die_with_parent()
    exit_when_hung_up(sys.stdin.fileno(), whole_group=True)
    spec = JobSpec.model_validate_json(line)
    result = run(spec)
    result_out.write(result.model_dump_json() + "\n")
    result_out.flush()


if __name__ == "__main__":
    main()
