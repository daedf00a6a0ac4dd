"""Session-wide fixtures: real registries on 127.0.0.1 and offline-built test images (see tests/harness)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.images import LayoutImage
from harness.refreg import refreg_binary
from harness.registry import RunningRegistry, run_referrers_registry, run_registry
from harness.testimages import ImageSet, load_rootfs_image, load_test_images
from harness.tools import esgz_binary

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED = REPO_ROOT.parent / "shared"


def pytest_configure(config: pytest.Config) -> None:
    if not (SHARED / "tools").is_dir() or not (SHARED / "fixtures").is_dir():
        pytest.exit(
            f"the tests need the reference folder {SHARED} (../shared beside the repository): it is missing",
            returncode=pytest.ExitCode.USAGE_ERROR,
        )


@pytest.fixture(scope="session")
def registry_plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    """docker-registry over plain HTTP without auth."""
    with run_registry(tmp_path_factory.mktemp("registry-plain")) as registry:
        yield registry


@pytest.fixture(scope="session")
def registry_basic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    """docker-registry over plain HTTP with htpasswd Basic auth; every valid user has full access."""
    with run_registry(tmp_path_factory.mktemp("registry-basic"), auth="basic") as registry:
        yield registry


@pytest.fixture(scope="session")
def registry_token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    """docker-registry over plain HTTP with Bearer tokens from the test token server (per-user rights)."""
    with run_registry(tmp_path_factory.mktemp("registry-token"), auth="token") as registry:
        yield registry


@pytest.fixture(scope="session")
def registry_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    """docker-registry over HTTPS (server cert from a test CA: `ca_file`) with token auth, realm on HTTPS."""
    with run_registry(tmp_path_factory.mktemp("registry-tls"), auth="token", tls=True) as registry:
        yield registry


@pytest.fixture(scope="session")
def test_images() -> ImageSet:
    """Offline test images (busybox amd64/arm64, OCI index, Docker schema2, whiteouts, edge tars) in one
    read-only OCI layout, built once into .cache/testimages and reused by later runs."""
    return load_test_images(REPO_ROOT / ".cache" / "testimages")


@pytest.fixture(scope="session")
def rootfs_image() -> tuple[LayoutImage, dict[str, Path]]:
    """A realistic 2-layer Debian minbase image (~50 MB gzip; built once by debootstrap, ~45 s) and
    its uncompressed layer tars `rootfs-lower`/`rootfs-upper`. Use it only from tests marked slow."""
    return load_rootfs_image(REPO_ROOT / ".cache" / "testimages")


@pytest.fixture(scope="session")
def esgz() -> Path:
    """The Go eStargz reference tool from ../shared/tools/esgz (`esgz verify BLOB`, `esgz toc BLOB`)."""
    try:
        return esgz_binary(REPO_ROOT)
    except FileNotFoundError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def registry_referrers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    """A registry WITH the OCI referrers API (go-containerregistry, plain HTTP, no auth, no cross-repo
    mount); skipped when it cannot be built (needs golang-go and the Debian mirror)."""
    try:
        binary = refreg_binary(REPO_ROOT / ".cache" / "bin")
    except RuntimeError as exc:
        pytest.skip(f"referrers registry unavailable: {exc}")
    with run_referrers_registry(tmp_path_factory.mktemp("registry-referrers"), binary) as registry:
        yield registry
