"""The registry client against a registry that misbehaves on purpose (tests/harness/hostile.py).

Credentials never reach another origin (a second server records every request it gets); endless,
huge and slow answers, pagination loops and odd Retry-After values each end with one line within
the configured deadline, and the CLI's peak RSS stays bounded.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness.clients import ACCELD
from harness.hostile import (
    REPOSITORY,
    ROBOT,
    ROBOT_BASIC,
    HostileRegistry,
    Image,
    Recorder,
    http_date,
    run_measured,
    running,
)
from harness.images import add_blob, init_layout, tag_in_index
from harness.tls import TlsFiles, make_tls_files
from service_helpers import acceld_command, service_config, write_config

from acceld.config import RegistryConfig
from acceld.oci.digest import sha256_digest
from acceld.oci.models import Descriptor
from acceld.registry.client import RegistryClient, RetryPolicy, retry_after
from acceld.registry.errors import AuthenticationError, NotFound, RegistryError
from acceld.registry.limits import ResponseTooLarge, TransferStalled

pytestmark = pytest.mark.timeout(120)
QUICK_RETRY = RetryPolicy(attempts=2, base_delay=0.01, max_delay=0.05, max_retry_after=1.0)
LIMITS = {"request_timeout": 3.0, "blob_stall_timeout": 2.0, "max_retry_after": 1.0}
MAX_CLI_RSS_MIB = 150  # the CLI alone peaks near 55 MiB; an unbounded read grows into gigabytes


@pytest.fixture(autouse=True)
def _no_ambient_docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker-config"))


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("hostile-tls"), ips=("127.0.0.1", "127.0.0.2"))


@pytest.fixture
def other() -> Iterator[Recorder]:
    """Another origin (another host) over plain http."""
    recorder = Recorder("127.0.0.2", None)
    with running(recorder):
        yield recorder


@pytest.fixture
def other_tls(tls: TlsFiles) -> Iterator[Recorder]:
    """Another origin (another host) over https, trusted through the registry's ca_file."""
    recorder = Recorder("127.0.0.2", tls)
    with running(recorder):
        yield recorder


@pytest.fixture
def hostile(other: Recorder) -> Iterator[HostileRegistry]:
    registry = HostileRegistry(other=other.url)
    with running(registry):
        yield registry


def settings(registry: HostileRegistry, tls: TlsFiles | None = None, **overrides: Any) -> RegistryConfig:
    values: dict[str, Any] = {
        "plain_http": registry.tls is None,
        "ca_file": tls.ca_file if tls else None,
        "username": ROBOT[0],
        "password": ROBOT[1],
        **LIMITS,
        **overrides,
    }
    return RegistryConfig.model_validate(values)


def client(registry: HostileRegistry, tls: TlsFiles | None = None, **overrides: Any) -> RegistryClient:
    return RegistryClient(registry.host, settings(registry, tls, **overrides), retry=QUICK_RETRY)


def assert_no_credentials(recorder: Recorder) -> None:
    leaked = [seen for seen in recorder.requests if seen.authorization or ROBOT[1] in seen.path]
    assert leaked == []


def one_line(error: BaseException) -> str:
    text = str(error)
    assert text and "\n" not in text
    return text


# -- credentials stay on the registry's origin ----------------------------------------------------


async def test_token_realm_on_another_http_origin_is_refused(
    hostile: HostileRegistry, other: Recorder
) -> None:
    hostile.scenario = "foreign-realm"
    async with client(hostile) as c:
        with pytest.raises(AuthenticationError) as excinfo:
            await c.repository(REPOSITORY).get_manifest("v1")
    assert "refused" in one_line(excinfo.value) and other.url in str(excinfo.value)
    assert other.requests == []


async def test_http_token_realm_of_a_tls_registry_is_refused(tls: TlsFiles) -> None:
    """No downgrade: the realm is on the registry's own host, but over http."""
    same_host = Recorder("127.0.0.1", None)
    registry = HostileRegistry(tls=tls, other=same_host.url, scenario="foreign-realm")
    with running(same_host, registry):
        async with client(registry, tls) as c:
            with pytest.raises(AuthenticationError, match="refused"):
                await c.repository(REPOSITORY).get_manifest("v1")
    assert same_host.requests == []
    assert registry.requests  # it was asked, and answered with its realm


async def test_next_page_on_another_origin_is_refused(hostile: HostileRegistry, other: Recorder) -> None:
    hostile.scenario = "link-foreign"
    async with client(hostile) as c:
        with pytest.raises(RegistryError) as excinfo:
            await c.repository(REPOSITORY).list_tags()
    assert "another origin" in one_line(excinfo.value)
    assert other.requests == []  # not even without credentials: its tags would pass as this registry's


async def test_upload_location_on_another_http_origin_is_refused(
    hostile: HostileRegistry, other: Recorder
) -> None:
    hostile.scenario = "location-foreign"
    data = os.urandom(5000)
    async with client(hostile) as c:
        with pytest.raises(RegistryError) as excinfo:
            await c.repository(REPOSITORY).put_blob(blob(data), data)
    assert "upload Location" in one_line(excinfo.value)
    assert other.requests == []


async def test_upload_location_on_another_https_origin_gets_no_credentials(
    tls: TlsFiles, other_tls: Recorder
) -> None:
    registry = HostileRegistry(other=other_tls.url, scenario="location-foreign")
    data = os.urandom(5000)
    with running(registry):
        async with client(registry, tls) as c:
            assert await c.repository(REPOSITORY).put_blob(blob(data), data) == "uploaded"
    assert [seen.method for seen in other_tls.requests] == ["PUT"]  # the blob went there, nothing else
    assert_no_credentials(other_tls)
    assert any(seen.authorization == ROBOT_BASIC for seen in registry.requests)


async def test_blob_redirect_to_another_origin_drops_credentials(
    hostile: HostileRegistry, other: Recorder
) -> None:
    hostile.scenario = "blob-redirect"
    async with client(hostile) as c:
        with pytest.raises(NotFound) as excinfo:  # the recorder has no such blob
            await c.repository(REPOSITORY).get_blob_bytes(blob(hostile.image.config))
    one_line(excinfo.value)
    assert [seen.method for seen in other.requests] == ["GET"]
    assert_no_credentials(other)


def blob(data: bytes) -> Descriptor:
    return Descriptor(mediaType="application/octet-stream", digest=sha256_digest(data), size=len(data))


# -- endless, huge and slow answers ---------------------------------------------------------------


@pytest.mark.parametrize("scenario", ["endless-manifest", "huge-declared-manifest"])
async def test_oversized_manifest_is_refused_while_reading(hostile: HostileRegistry, scenario: str) -> None:
    hostile.scenario = scenario
    async with client(hostile) as c:
        with pytest.raises(ResponseTooLarge) as excinfo:
            await c.repository(REPOSITORY).get_manifest("v1")
    assert f"larger than {4 << 20} bytes" in one_line(excinfo.value)


async def test_undecodable_answer_is_one_line(hostile: HostileRegistry) -> None:
    hostile.scenario = "bad-encoding"
    async with client(hostile) as c:
        with pytest.raises(RegistryError) as excinfo:
            await c.repository(REPOSITORY).get_manifest("v1")
    assert "manifest v1" in one_line(excinfo.value)


async def test_a_big_blob_is_no_big_answer_to_head(hostile: HostileRegistry) -> None:
    hostile.scenario = "big-blob"
    async with client(hostile) as c:
        assert await c.repository(REPOSITORY).has_blob(sha256_digest(hostile.image.layer))


async def test_endless_token_answer_is_refused(hostile: HostileRegistry) -> None:
    hostile.scenario = "endless-token"
    async with client(hostile) as c:
        with pytest.raises(ResponseTooLarge, match="token from"):
            await c.repository(REPOSITORY).get_manifest("v1")


@pytest.mark.parametrize("scenario", ["slow-manifest", "slow-headers"])
async def test_slow_answer_ends_at_the_request_deadline(hostile: HostileRegistry, scenario: str) -> None:
    hostile.scenario = scenario
    async with client(hostile, blob_stall_timeout=30.0) as c:  # only the deadline ends it
        with pytest.raises(RegistryError) as excinfo:
            await c.repository(REPOSITORY).get_manifest("v1")
    assert "within 3 s" in one_line(excinfo.value) and "request_timeout" in str(excinfo.value)


async def test_slow_answer_to_an_upload_ends_at_its_deadline(hostile: HostileRegistry) -> None:
    """An upload's deadline is request_timeout plus its size at blob_min_speed: 3 + 5000/1024 s.

    The stall timeout is raised so that only the deadline can end the dribbled answer (a byte every
    2 s against a 2 s stall timeout races on a loaded machine).
    """
    hostile.scenario = "slow-upload-answer"
    data = os.urandom(5000)
    async with client(hostile, blob_stall_timeout=30.0) as c:
        with pytest.raises(RegistryError) as excinfo:
            await c.repository(REPOSITORY).put_blob(blob(data), data)
    assert "within 8 s" in one_line(excinfo.value)


async def test_dribbled_blob_fails_as_stalled(hostile: HostileRegistry) -> None:
    hostile.scenario = "slow-blob"
    layer = hostile.image.layer
    async with client(hostile) as c:
        with pytest.raises(TransferStalled) as excinfo:
            async for _ in c.repository(REPOSITORY).blob_chunks(blob(layer)):
                pass
    assert "stalled" in one_line(excinfo.value) and "blob_stall_timeout" in str(excinfo.value)


async def test_slow_blob_within_the_minimum_speed_completes(hostile: HostileRegistry) -> None:
    """A stall window that a slow transfer still satisfies: no false alarm."""
    hostile.scenario, hostile.dribble_interval = "slow-blob", 0.01
    config = hostile.image.config
    async with client(hostile, blob_stall_timeout=5.0, blob_min_speed=1) as c:
        data = b"".join([chunk async for chunk in c.repository(REPOSITORY).blob_chunks(blob(config))])
    assert data == config


# -- pagination -------------------------------------------------------------------------------------


async def test_self_pointing_next_page_is_a_loop(hostile: HostileRegistry) -> None:
    hostile.scenario = "link-self"
    async with client(hostile) as c:
        with pytest.raises(RegistryError) as excinfo:
            await c.repository(REPOSITORY).list_tags()
    assert "loops" in one_line(excinfo.value)
    assert hostile.count("/tags/list") == 1


async def test_endless_pagination_stops_at_the_limit(hostile: HostileRegistry) -> None:
    hostile.scenario = "link-endless"
    async with client(hostile) as c:
        repo = c.repository(REPOSITORY)
        tags = await repo.list_tags(limit=250)
        assert len(tags) == 250 and tags[:2] == ["t0-0", "t0-1"] and tags[-1] == "t2-49"
        assert hostile.count("/tags/list") == 3  # pages of 100: the third one ends it
    async with client(hostile, max_listing_entries=3000) as c:
        with pytest.raises(RegistryError) as excinfo:
            await c.repository(REPOSITORY).list_tags()
    assert "more than 3000 entries" in one_line(excinfo.value) and "max_listing_entries" in str(excinfo.value)
    assert hostile.count("/tags/list") == 3 + 31


# -- Retry-After ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", ["soon", "1", http_date(1), "Mon, 32 Foo 2026 99:99:99 GMT", "99999999", "-3"]
)
async def test_retry_after_in_any_form_is_survived(hostile: HostileRegistry, value: str) -> None:
    hostile.scenario, hostile.retry_after = "retry-after", value
    async with client(hostile) as c:
        manifest = await c.repository(REPOSITORY).get_manifest("v1")
    assert manifest.data == hostile.image.manifest
    assert hostile.count("/manifests/v1") == 2


def test_retry_after_parsing() -> None:
    assert retry_after("7", 30) == 7
    assert retry_after(" 2.5 ", 30) == 2.5
    assert retry_after("120", 30) == 30  # capped
    assert retry_after(http_date(-3600), 30) == 0  # in the past
    future = retry_after(http_date(20), 30)
    assert future is not None and 10 < future <= 20
    assert retry_after("Sun, 06 Nov 1994 08:49:37", 30) == 0  # no zone: GMT
    for garbage in ("soon", "", None, "-1", "nan", "inf", "1e9", "0x10", "Mon, 32 Foo 2026", "9" * 400):
        assert retry_after(garbage, 30) is None, garbage


# -- the command line: one line on stderr, exit 1, bounded memory -------------------------------------


def cli_env(tmp_path: Path) -> dict[str, str]:
    return {
        "ACCELD_CACHE_DIR": str(tmp_path / "cache"),
        "DOCKER_CONFIG": str(tmp_path / "no-docker-config"),
        "PATH": "",
    }


def write_registry_config(tmp_path: Path, registry: HostileRegistry, **overrides: Any) -> Path:
    entry = settings(registry, **overrides).model_dump(mode="json", exclude_none=True)
    path = tmp_path / "acceld.yml"
    path.write_text(yaml.safe_dump({"registries": {registry.host: entry}}))
    return path


def run_cli(tmp_path: Path, *args: str) -> Any:
    result = run_measured([ACCELD, *args], cli_env(tmp_path), 90, tmp_path)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()  # progress lines, then the error
    assert lines[-1].startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    assert sum(line.startswith("error") for line in lines) == 1
    assert result.max_rss_mib < MAX_CLI_RSS_MIB
    return result


@pytest.mark.parametrize(
    ("scenario", "message"),
    [
        ("endless-manifest", "larger than"),
        ("slow-manifest", "within 3 s"),
        ("foreign-realm", "refused"),
        ("endless-token", "larger than"),
    ],
)
def test_cli_inspect_ends_with_one_line(
    hostile: HostileRegistry, other: Recorder, tmp_path: Path, scenario: str, message: str
) -> None:
    hostile.scenario = scenario
    config = write_registry_config(tmp_path, hostile, blob_stall_timeout=30.0)  # deadlines, not stalls
    result = run_cli(tmp_path, "inspect", f"{hostile.host}/{REPOSITORY}:v1", "--config", str(config))
    assert message in result.stderr
    assert other.requests == []
    assert hostile.count("/manifests/v1") <= 1  # a deadline or cap is not retried


def test_cli_copy_refuses_a_foreign_upload_location(
    hostile: HostileRegistry, other: Recorder, tmp_path: Path
) -> None:
    hostile.scenario = "location-foreign"
    layout = tmp_path / "layout"
    init_layout(layout)
    image = Image.make()  # blobs the registry does not have
    add_blob(layout, image.layer, "application/vnd.oci.image.layer.v1.tar+gzip")
    add_blob(layout, image.config, "application/vnd.oci.image.config.v1+json")
    manifest = add_blob(layout, image.manifest, "application/vnd.oci.image.manifest.v1+json")
    tag_in_index(layout, manifest, "v1")
    config = write_registry_config(tmp_path, hostile)
    result = run_cli(
        tmp_path, "copy", f"oci:{layout}:v1", f"{hostile.host}/{REPOSITORY}:v2", "--config", str(config)
    )
    assert "upload Location" in result.stderr
    assert other.requests == []
    assert hostile.pushed == {}  # no manifest after a failed blob


def test_cli_copy_from_a_dribbling_registry_stalls(hostile: HostileRegistry, tmp_path: Path) -> None:
    hostile.scenario = "slow-blob"
    # Each blob: resumed a few times, then retried whole a few times; half a second per stall here.
    config = write_registry_config(tmp_path, hostile, blob_stall_timeout=0.5)
    result = run_cli(
        tmp_path,
        "copy",
        f"{hostile.host}/{REPOSITORY}:v1",
        f"oci:{tmp_path / 'out'}:v1",
        "--config",
        str(config),
    )
    assert "stalled" in result.stderr


def sync(hostile: HostileRegistry, tmp_path: Path, max_tags: int) -> Any:
    entry = settings(hostile).model_dump(mode="json", exclude_none=True)
    rules = [{"name": "hostile", "repositories": [REPOSITORY], "drivers": [{"name": "estargz"}]}]
    config = service_config(tmp_path / "data", {hostile.host: entry}, rules=rules)
    config["sync"] = {"max_tags_per_repository": max_tags}
    config_file = write_config(tmp_path / f"service-{max_tags}.yml", config)
    result = run_measured(
        acceld_command("sync", "--config", str(config_file)), cli_env(tmp_path), 90, tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert result.max_rss_mib < MAX_CLI_RSS_MIB
    return result


def test_cli_sync_stops_at_max_tags(hostile: HostileRegistry, tmp_path: Path) -> None:
    hostile.scenario = "link-endless"
    sync(hostile, tmp_path, max_tags=3)
    assert hostile.count("/tags/list") == 1  # three tags asked for, three read
    assert hostile.count("/manifests/t0-2") == 1 and hostile.count("/manifests/t0-3") == 0


def test_cli_sync_reports_a_pagination_loop(hostile: HostileRegistry, tmp_path: Path) -> None:
    hostile.scenario = "link-self"
    result = sync(hostile, tmp_path, max_tags=1000)
    assert hostile.count("/tags/list") == 1
    warnings = [line for line in result.stderr.splitlines() if "loops" in line]
    assert len(warnings) == 1 and warnings[0].startswith(f"warning: {hostile.host}/{REPOSITORY}: ")
