"""Reconcile: walk the repositories the rules cover and queue every image without its conversion.

Repositories come from the rules when their patterns are literal names, else from the registry
catalog (`/v2/_catalog`, when allowed). For each tag a rule accepts, the converted tag
(`<tag><suffix>`) must exist and name the image as its source (a result without a tag, SOCI v1,
must refer to the image or its manifests through the referrers API); if not, a task is queued (the
dedup key merges it with any queued or running one; a failed or stale finished one is requeued;
a further tag of an image converted before becomes a tag task, one manifest PUT).
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass, field

from acceld.errors import AcceldError
from acceld.registry.stores import Stores
from acceld.service.artifacts import converted_counterpart, destination_repository, referrer_result
from acceld.service.config import ServiceConfig
from acceld.service.harbor import Artifact
from acceld.service.rules import Rule, RuleSet
from acceld.service.store import NewTask, TaskStore

log = logging.getLogger("acceld.service")
SYNC_OPERATOR = "acceld-sync"
_LITERAL_RE = re.compile(r"^[a-z0-9][a-z0-9._/-]*$")  # no glob characters, no re: prefix


@dataclass
class SyncReport:
    repositories: int = 0
    images: int = 0
    up_to_date: int = 0
    queued: int = 0
    requeued: int = 0
    errors: list[str] = field(default_factory=list)


def literal_repositories(rules: list[Rule]) -> list[str] | None:
    """The repository names when every rule names its repositories literally, else None (catalog needed)."""
    names = [p for rule in rules for p in rule.repository_patterns]
    return sorted(set(names)) if all(_LITERAL_RE.match(p) for p in names) else None


async def reconcile(config: ServiceConfig, rules: RuleSet, store: TaskStore) -> SyncReport:
    report = SyncReport()
    async with Stores(config.registry_settings()) as stores:
        for host in sorted(h.lower() for h in config.webhook.sources):
            host_rules = [r for r in rules.rules if not r.registries or host in r.registries]
            if not host_rules:
                continue
            client = stores.client(host)
            try:
                repositories = literal_repositories(host_rules)
                if repositories is None:
                    if not config.sync.catalog:
                        report.errors.append(f"{host}: rules use patterns but sync.catalog is off")
                        continue
                    repositories = await client.catalog()
            except AcceldError as exc:
                report.errors.append(f"{host}: {exc}")
                continue
            for repository in repositories:
                if any(r.covers(host, repository) for r in host_rules):
                    await _sync_repository(config, rules, store, stores, host, repository, report)
    return report


async def _sync_repository(
    config: ServiceConfig,
    rules: RuleSet,
    store: TaskStore,
    stores: Stores,
    host: str,
    repository: str,
    report: SyncReport,
) -> None:
    repo = stores.client(host).repository(repository)
    report.repositories += 1
    try:
        tags = await repo.list_tags(limit=config.sync.max_tags_per_repository)
    except AcceldError as exc:
        report.errors.append(f"{host}/{repository}: {exc}")
        return
    new_tasks: list[NewTask] = []
    for tag in tags:
        if rules.is_converted_tag(tag):
            continue
        artifact = Artifact(host, repository, tag, None, f"{host}/{repository}:{tag}")
        rule = rules.match("PUSH_ARTIFACT", artifact)
        if rule is None:
            continue
        destination = rule.destination(host, repository)
        target_repo = repo if destination is None else destination_repository(stores, destination)
        try:
            source = await repo.get_manifest(tag)
            report.images += 1
            for conversion in rule.conversions:
                if await converted_counterpart(
                    target_repo, source, tag + conversion.tag_suffix
                ) or await referrer_result(
                    target_repo, repo, source, conversion.driver_instance, conversion.platforms or None
                ):
                    report.up_to_date += 1
                    continue
                new_tasks.append(
                    NewTask(
                        kind="convert",
                        rule=rule.name,
                        registry=host,
                        repository=repository,
                        tag=tag,
                        source_digest=source.digest,
                        driver=conversion.driver,
                        options=dict(conversion.options),
                        platforms=conversion.platforms,
                        options_key=conversion.options_key,
                        operator=SYNC_OPERATOR,
                        destination=destination,
                    )
                )
        except AcceldError as exc:
            report.errors.append(f"{host}/{repository}:{tag}: {exc}")
    enqueued = await asyncio.to_thread(store.enqueue, new_tasks, config.workers.max_attempts)
    for entry in enqueued:
        if entry.created:
            report.queued += 1
        elif entry.status in ("failed", "succeeded", "skipped") and await asyncio.to_thread(
            store.requeue_stale, entry.task_id
        ):
            report.requeued += 1
