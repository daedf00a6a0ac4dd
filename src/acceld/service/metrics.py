"""Prometheus metrics of one service instance (own registry, no global state)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

_SIZE_BUCKETS = tuple(float(1 << n) for n in range(16, 38, 2))  # 64 KiB … 64 GiB
_DURATION_BUCKETS = (1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


class _TaskCounts(Collector):
    """`acceld_tasks{status}` read from the task store at scrape time."""

    def __init__(self, counts: Callable[[], Mapping[str, int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("acceld_tasks", "Tasks in the store by status", labels=["status"])
        for status, count in self._counts().items():
            family.add_metric([status], count)
        yield family


class ServiceMetrics:
    def __init__(self, task_counts: Callable[[], Mapping[str, int]]) -> None:
        self.registry = CollectorRegistry()
        self.webhook_requests = Counter(
            "acceld_webhook_requests", "Webhook requests by outcome", ["outcome"], registry=self.registry
        )
        self.conversion_seconds = Histogram(
            "acceld_conversion_duration_seconds",
            "Duration of conversion attempts by driver and outcome",
            ["driver", "outcome"],
            buckets=_DURATION_BUCKETS,
            registry=self.registry,
        )
        self.source_bytes = Histogram(
            "acceld_conversion_source_bytes",
            "Size of converted source images",
            ["driver"],
            buckets=_SIZE_BUCKETS,
            registry=self.registry,
        )
        self.target_bytes = Histogram(
            "acceld_conversion_target_bytes",
            "Size of converted images",
            ["driver"],
            buckets=_SIZE_BUCKETS,
            registry=self.registry,
        )
        self.notifications = Counter(
            "acceld_notifications",
            "Completion notification delivery attempts by outcome (delivered, retry, failed)",
            ["outcome"],
            registry=self.registry,
        )
        self.registry.register(_TaskCounts(task_counts))

    def render(self) -> bytes:
        return generate_latest(self.registry)
