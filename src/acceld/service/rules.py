"""Conversion rules compiled for matching: which artifact, on which event, into which formats."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from acceld.convert.api import make_driver
from acceld.formats.driver import AnyDriver
from acceld.service.config import RuleConfig
from acceld.service.harbor import Artifact

DriverFactory = Callable[[str, Mapping[str, Any]], AnyDriver]


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """`re:<regex>` as is; otherwise a glob where `**` crosses `/`, `*` and `?` do not."""
    if pattern.startswith("re:"):
        return re.compile(pattern[3:])
    parts: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            parts.append(".*")
            i += 2
        elif pattern[i] == "*":
            parts.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            parts.append("[^/]")
            i += 1
        else:
            parts.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(parts))


def _any_match(patterns: Sequence[re.Pattern[str]], value: str) -> bool:
    return any(p.fullmatch(value) for p in patterns)


@dataclass(frozen=True)
class Conversion:
    """One output format of a rule."""

    driver: str
    options: Mapping[str, Any]
    platforms: tuple[str, ...]
    tag_suffix: str
    options_key: str  # everything that changes the output besides the source: part of the dedup key
    driver_instance: AnyDriver = field(compare=False)  # built from `driver` and `options`


class Rule:
    def __init__(self, config: RuleConfig, driver_factory: DriverFactory) -> None:
        self.name = config.name
        self.registries = frozenset(r.lower() for r in config.registries)
        self.projects = [compile_pattern(p) for p in config.projects]
        self.repositories = [compile_pattern(p) for p in config.repositories]
        self.repository_patterns = tuple(config.repositories)
        self.tags = [compile_pattern(p) for p in config.tags]
        self.untagged = config.untagged
        self.events = frozenset(config.events)
        self.delete_converted = config.delete_converted
        self.target = config.target
        platforms = tuple(sorted(set(config.platforms)))
        conversions = []
        for spec in config.drivers:
            driver = driver_factory(spec.name, spec.options)
            # the driver's layer key, plus the rule's own options: some (SOCI's version and layer
            # threshold) shape the image without changing a layer
            key = driver.options_key()
            if spec.options:
                key += ";options=" + json.dumps(dict(spec.options), sort_keys=True, default=str)
            if platforms:
                key += f";platforms={','.join(platforms)}"
            conversions.append(
                Conversion(
                    spec.name,
                    dict(spec.options),
                    platforms,
                    driver.tag_suffix,
                    key,
                    driver,
                )
            )
        self.conversions: tuple[Conversion, ...] = tuple(conversions)

    def covers(self, registry: str, repository: str) -> bool:
        """True when the rule applies to this repository (whatever the tag or event)."""
        if self.registries and registry not in self.registries:
            return False
        project = repository.split("/", 1)[0]
        return _any_match(self.projects, project) and _any_match(self.repositories, repository)

    def destination(self, registry: str, repository: str) -> str | None:
        """`registry/repository` the results go to when the rule maps them elsewhere, else None."""
        if self.target is None:
            return None
        project, _, name = repository.partition("/")
        fields = {"registry": registry, "project": project, "repository": repository, "name": name}
        mapped = f"{self.target.registry.format(**fields)}/{self.target.repository.format(**fields)}"
        return None if mapped == f"{registry}/{repository}" else mapped

    def accepts_tag(self, tag: str | None) -> bool:
        return self.untagged if tag is None else _any_match(self.tags, tag)

    def matches(self, event_type: str, artifact: Artifact) -> bool:
        return (
            event_type in self.events
            and self.covers(artifact.registry, artifact.repository)
            and self.accepts_tag(artifact.tag)
        )


class RuleSet:
    """The configured rules in order; the first rule that matches decides."""

    def __init__(self, configs: Sequence[RuleConfig], driver_factory: DriverFactory = make_driver) -> None:
        self.rules = [Rule(c, driver_factory) for c in configs]
        self.tag_suffixes = frozenset(c.tag_suffix for r in self.rules for c in r.conversions if c.tag_suffix)

    def match(self, event_type: str, artifact: Artifact) -> Rule | None:
        return next((r for r in self.rules if r.matches(event_type, artifact)), None)

    def for_deletion(self, artifact: Artifact) -> Rule | None:
        """The rule whose converted images a DELETE_ARTIFACT of `artifact` removes, if any."""
        return next(
            (
                r
                for r in self.rules
                if r.delete_converted and r.covers(artifact.registry, artifact.repository)
            ),
            None,
        )

    def is_converted_tag(self, tag: str | None) -> bool:
        """Tags acceld writes itself: converted images and referrers fallback tags (`sha256-<hex>`)."""
        if tag is None:
            return False
        return tag.startswith("sha256-") or any(tag.endswith(s) for s in self.tag_suffixes)
