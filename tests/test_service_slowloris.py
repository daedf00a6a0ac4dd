"""Slowloris: 1,100 half-sent requests held open for 20 s (reopened when the server closes them)
against a server started with the usual soft limit of 1,024 open files, while real webhooks keep
arriving: every one of them is answered 202. Loopback only; bounded in connections and time."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
from harness import slowloris
from harness.registry import RunningRegistry
from service_helpers import WEBHOOK_SECRET, default_payload, run_service, service_config, write_config
from service_helpers import resource as harbor_resource

CONNECTIONS = 1100
HOLD_SECONDS = 20


def test_half_open_connections_do_not_block_webhooks(registry_plain: RunningRegistry, tmp_path: Path) -> None:
    config = service_config(
        tmp_path / "data", {registry_plain.host: {"plain_http": True}}, workers={"concurrency": 0}
    )
    with run_service(
        write_config(tmp_path / "acceld.yml", config), tmp_path / "serve.log", open_files=1024
    ) as service:
        port = service.url.rsplit(":", 1)[1]
        attack = subprocess.Popen(
            [sys.executable, slowloris.__file__, "127.0.0.1", port, str(CONNECTIONS), str(HOLD_SECONDS)],
            stdout=subprocess.PIPE,
            text=True,
        )
        statuses: list[int | str] = []
        try:
            n = 0
            while attack.poll() is None:
                n += 1
                event = default_payload(
                    "PUSH_ARTIFACT",
                    [harbor_resource(registry_plain.host, "lib/app", f"sha256:{n:064x}", f"v{n}")],
                )
                try:
                    reply = httpx.post(
                        f"{service.url}/api/v1/conversions",
                        content=json.dumps(event),
                        headers={"Content-Type": "application/json", "Authorization": WEBHOOK_SECRET},
                        timeout=10,
                    )
                    statuses.append(reply.status_code)
                except httpx.HTTPError as exc:
                    statuses.append(type(exc).__name__)
                time.sleep(0.25)
            report = attack.communicate(timeout=60)[0]
        finally:
            if attack.poll() is None:
                attack.kill()
                attack.wait()
        assert attack.returncode == 0, report
        most_open = int(re.search(r"most_open=(\d+)", report).group(1))  # type: ignore[union-attr]
        assert most_open >= 1000, report  # the attack really held its connections
        assert len(statuses) >= 10 and set(statuses) == {202}, statuses
        assert service.process.poll() is None
