"""Everything one running service holds: config, rules, secrets, task store, metrics, worker pool."""

from __future__ import annotations

import hmac

from acceld.config import ConfigError
from acceld.private import private_dir
from acceld.service.batcher import EnqueueBatcher, QueueDepth
from acceld.service.config import ServiceConfig
from acceld.service.metrics import ServiceMetrics
from acceld.service.notifications import Notifier
from acceld.service.rules import RuleSet
from acceld.service.store import STATUSES, StoreError, TaskStore
from acceld.service.workers import WorkerPool


def same_secret(given: str, expected: str) -> bool:
    """Constant-time comparison (the time does not depend on where the values differ)."""
    return hmac.compare_digest(given.encode(), expected.encode())


class Service:
    def __init__(self, config: ServiceConfig, store: TaskStore | None = None) -> None:
        self.config = config
        data_dir = config.resolved_data_dir()
        try:
            private_dir(data_dir)
        except OSError as exc:
            raise ConfigError(f"cannot create the data directory {data_dir}: {exc.strerror}") from None
        self.rules = RuleSet(config.rules)
        self.webhook_secrets = {host.lower(): value for host, value in config.webhook_secrets().items()}
        self.webhook_sources = frozenset(host.lower() for host in config.webhook.sources)
        self.api_token = config.api_token()
        self.own_operators = config.own_operators()
        self.store = store or TaskStore.open(config.database_url())
        self.intake = EnqueueBatcher(self.store, config.workers.max_attempts)
        self.queue_depth = QueueDepth(self.store)
        self.metrics = ServiceMetrics(self._task_counts)
        secrets = config.notification_secrets()
        self.notifier = Notifier(self.store, config.notifications, secrets, self.metrics)
        self.notifier.poll_seconds = config.workers.poll_seconds
        if self.notifier.enabled:
            self.store.outbox_entries = self.notifier.entries_for
        self.pool = WorkerPool(
            self.store,
            config.workers,
            config.registries,
            self.metrics,
            cache_dir=data_dir / "cache",
            limits=config.limits,
        )

    def _task_counts(self) -> dict[str, int]:
        try:
            return self.store.counts_by_status()
        except StoreError:
            return dict.fromkeys(STATUSES, 0)

    def webhook_caller_known(self, authorization: str) -> bool:
        """True when the header equals the secret of some source (every secret is compared)."""
        matches = [same_secret(authorization, secret) for secret in self.webhook_secrets.values()]
        return bool(authorization) and any(matches)

    def webhook_allowed(self, authorization: str, host: str) -> bool:
        expected = self.webhook_secrets.get(host)
        return expected is not None and bool(authorization) and same_secret(authorization, expected)

    def api_token_valid(self, token: str) -> bool:
        return bool(token) and same_secret(token, self.api_token)
