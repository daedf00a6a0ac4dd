"""/docs and /redoc work on an air-gapped host: their scripts and styles come from the service itself,
and headless Chromium — whose every connection off this machine goes to a dead proxy — renders the
API's operations from them."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from service_helpers import ServiceProcess, run_service, service_config, write_config

# Operation summaries both pages must show (from the OpenAPI document, rendered by the page's script).
OPERATIONS = (
    "Harbor webhook (Default or CloudEvents payload)",
    "Readiness: task store reachable, workers running",
)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    workdir = tmp_path_factory.mktemp("docs")
    config = write_config(workdir / "acceld.yaml", service_config(workdir / "data", {"h.test": {}}))
    with run_service(config, workdir / "service.log") as running:
        yield running


def rendered_dom(url: str, profile: Path) -> str:
    """The page's DOM after its scripts ran, from headless Chromium without access beyond loopback."""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium is not installed (Debian package chromium)", pytrace=False)
    result = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--proxy-server=http://127.0.0.1:9",  # nothing listens there; loopback is never proxied
            "--virtual-time-budget=15000",  # let the page fetch /openapi.json and render
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_page_uses_only_local_assets(service: ServiceProcess, page: str) -> None:
    html = httpx.get(service.url + page, timeout=30).text
    sources = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html) + re.findall(
        r"url:\s*'([^']+)'", html
    )
    assert sources, html
    for source in sources:
        assert source.startswith("/"), f"{page} loads {source} from elsewhere"
        assert httpx.get(service.url + source, timeout=30).status_code == 200, source


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_browser_renders_the_operations(service: ServiceProcess, page: str, tmp_path: Path) -> None:
    dom = rendered_dom(service.url + page, tmp_path / "profile")
    for summary in OPERATIONS:
        assert summary in dom, f"{summary!r} not rendered on {page}:\n{dom[-3000:]}"
    if page == "/docs":
        assert dom.count('class="opblock ') >= 8, dom[-3000:]  # one block per operation
