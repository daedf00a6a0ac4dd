"""Prune: converted images whose source no longer exists, for registries without Harbor's cascade delete.

The repositories the rules cover (and those they map results to) are walked tag by tag. A tagged
converted image names its source through `subject` (same repository) or through the source
digest and repository annotations (a mapped result); untagged results are found in the referrers
fallback indexes (`sha256-<hex>` tags) of sources that are gone. Only acceld's own outputs are
touched: manifests carrying its driver annotation, or SOCI indexes.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from acceld.convert.image import HARBOR_DRIVER_ANNOTATION, SOURCE_REPOSITORY_ANNOTATION
from acceld.errors import AcceldError
from acceld.oci.models import RawManifest
from acceld.registry.errors import NotFound
from acceld.registry.repository import RegistryRepository
from acceld.registry.stores import Stores
from acceld.service.artifacts import destination_repository, source_digest_annotation
from acceld.service.config import ServiceConfig
from acceld.service.rules import RuleSet
from acceld.service.sync import literal_repositories

_FALLBACK_PREFIX = "sha256-"
_SOCI_ARTIFACT_PREFIX = "application/vnd.amazon.soci"


@dataclass(frozen=True)
class Orphan:
    repository: str  # registry/repository holding it
    digest: str
    tag: str | None
    source: str  # registry/repository@digest that no longer exists


@dataclass
class PruneReport:
    repositories: int = 0
    orphans: list[Orphan] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


async def prune(config: ServiceConfig, rules: RuleSet, *, delete: bool) -> PruneReport:
    report = PruneReport()
    async with Stores(config.registry_settings()) as stores:
        for name in sorted(await _repositories(config, rules, stores, report)):
            repo = destination_repository(stores, name)
            report.repositories += 1
            try:
                orphans = await _orphans(stores, repo, config.sync.max_tags_per_repository)
            except AcceldError as exc:
                report.errors.append(f"{name}: {exc}")
                continue
            report.orphans += orphans
            if delete:
                for orphan in orphans:
                    try:
                        report.deleted += await _delete(repo, orphan)
                    except AcceldError as exc:
                        report.errors.append(f"{name}@{orphan.digest}: {exc}")
    return report


async def _repositories(
    config: ServiceConfig, rules: RuleSet, stores: Stores, report: PruneReport
) -> set[str]:
    """`registry/repository` of every covered repository and of every repository results are mapped to."""
    found: set[str] = set()
    for host in sorted(h.lower() for h in config.webhook.sources):
        host_rules = [r for r in rules.rules if not r.registries or host in r.registries]
        if not host_rules:
            continue
        try:
            repositories = literal_repositories(host_rules)
            if repositories is None:
                repositories = await stores.client(host).catalog() if config.sync.catalog else []
        except AcceldError as exc:
            report.errors.append(f"{host}: {exc}")
            continue
        for repository in repositories:
            for rule in host_rules:
                if rule.covers(host, repository):
                    found.add(f"{host}/{repository}")
                    if (destination := rule.destination(host, repository)) is not None:
                        found.add(destination)
    return found


async def _orphans(stores: Stores, repo: RegistryRepository, max_tags: int) -> list[Orphan]:
    here = f"{repo.client.host}/{repo.name}"
    orphans: dict[str, Orphan] = {}
    for tag in await repo.list_tags(limit=max_tags):
        try:
            raw = await repo.get_manifest(tag)
        except NotFound:
            continue  # deleted meanwhile
        if tag.startswith(_FALLBACK_PREFIX):
            subject = f"sha256:{tag.removeprefix(_FALLBACK_PREFIX)}"
            if raw.is_index and not await _exists(repo, subject):
                for entry in raw.index().manifests:
                    with contextlib.suppress(NotFound):
                        if _is_ours(await repo.get_manifest(entry.digest)):
                            orphans.setdefault(
                                entry.digest, Orphan(here, entry.digest, None, f"{here}@{subject}")
                            )
                orphans.setdefault(raw.digest, Orphan(here, raw.digest, tag, f"{here}@{subject}"))
            continue
        if not _is_ours(raw):
            continue
        source_repo, source_digest = _source_of(stores, repo, raw)
        if source_digest is None or await _exists(source_repo, source_digest):
            continue
        source = f"{source_repo.client.host}/{source_repo.name}@{source_digest}"
        orphans.setdefault(raw.digest, Orphan(here, raw.digest, tag, source))
    return list(orphans.values())


def _is_ours(raw: RawManifest) -> bool:
    if not (raw.is_manifest or raw.is_index):
        return False
    parsed = raw.parse()
    if HARBOR_DRIVER_ANNOTATION in (parsed.annotations or {}):
        return True
    return (parsed.artifact_type or "").startswith(_SOCI_ARTIFACT_PREFIX)


def _source_of(
    stores: Stores, repo: RegistryRepository, raw: RawManifest
) -> tuple[RegistryRepository, str | None]:
    subject = raw.subject()
    if subject is not None:
        return repo, subject.digest
    annotations = raw.parse().annotations or {}
    elsewhere = annotations.get(SOURCE_REPOSITORY_ANNOTATION)
    source_repo = destination_repository(stores, elsewhere) if elsewhere else repo
    return source_repo, source_digest_annotation(raw)


async def _exists(repo: RegistryRepository, digest: str) -> bool:
    try:
        await repo.resolve(digest)
    except NotFound:
        return False
    return True


async def _delete(repo: RegistryRepository, orphan: Orphan) -> list[str]:
    """Delete the orphan, a converted index with its children; the digests deleted. (A fallback
    index only lists referrers: each of those is an orphan of its own.)"""
    try:
        raw = await repo.get_manifest(orphan.digest)
    except NotFound:
        return []
    fallback = (orphan.tag or "").startswith(_FALLBACK_PREFIX)
    children = [d.digest for d in raw.index().manifests] if raw.is_index and not fallback else []
    deleted = []
    for digest in (orphan.digest, *children):
        with contextlib.suppress(NotFound):
            await repo.delete_manifest(digest)
            deleted.append(digest)
    return deleted
