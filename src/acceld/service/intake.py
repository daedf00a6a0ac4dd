"""From an authenticated Harbor event to the tasks it asks for (pure decisions, no I/O)."""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass, field

from acceld.service.harbor import Artifact, HarborEvent
from acceld.service.rules import Rule, RuleSet
from acceld.service.store import Kind, NewTask

DELETE_EVENT = "DELETE_ARTIFACT"


@dataclass
class Plan:
    tasks: list[NewTask] = field(default_factory=list)
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (resource_url, reason)
    deleted_sources: list[Artifact] = field(
        default_factory=list
    )  # their conversions release their dedup keys


def plan_event(
    event: HarborEvent,
    rules: RuleSet,
    own_operators: Collection[str],
    child_grace_seconds: float,
    now: float | None = None,
) -> Plan:
    """Decide what `event` asks for. Loop guard: acceld's own pushes and its converted tags are ignored;
    content markers (an already accelerated manifest, `subject`) are checked by the worker."""
    now = time.time() if now is None else now
    plan = Plan()
    if event.type == DELETE_EVENT:
        for artifact in event.artifacts:
            if artifact.digest is None:
                plan.ignored.append((artifact.resource_url, "deletion without a digest"))
                continue
            plan.deleted_sources.append(artifact)
            rule = rules.for_deletion(artifact)
            if rule is not None:
                plan.tasks.extend(_tasks(rule, artifact, event, "delete", now))
        return plan
    for artifact in event.artifacts:
        reason = _skip_reason(event, artifact, rules, own_operators)
        if reason is None:
            rule = rules.match(event.type, artifact)
            if rule is None:
                reason = f"no rule matches {event.type} of {artifact.repository}"
            else:
                # A digest-only push is usually a child of a multi-arch push whose index follows.
                not_before = now + child_grace_seconds if artifact.tag is None else now
                plan.tasks.extend(_tasks(rule, artifact, event, "convert", not_before))
                continue
        plan.ignored.append((artifact.resource_url, reason))
    return plan


def _skip_reason(event: HarborEvent, artifact: Artifact, rules: RuleSet, own: Collection[str]) -> str | None:
    if event.operator and event.operator in own:
        return f"pushed by acceld's own account {event.operator}"
    if rules.is_converted_tag(artifact.tag):
        return f"tag {artifact.tag} is a converted image"
    return None


def _tasks(
    rule: Rule, artifact: Artifact, event: HarborEvent, kind: Kind, not_before: float
) -> list[NewTask]:
    destination = rule.destination(artifact.registry, artifact.repository)
    return [
        NewTask(
            kind=kind,
            rule=rule.name,
            registry=artifact.registry,
            repository=artifact.repository,
            tag=artifact.tag,
            source_digest=artifact.digest,
            driver=c.driver,
            options=dict(c.options),
            platforms=c.platforms,
            options_key=c.options_key,
            operator=event.operator,
            not_before=not_before,
            destination=destination,
        )
        for c in rule.conversions
    ]
