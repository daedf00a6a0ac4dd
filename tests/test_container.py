"""The container image (Containerfile) end to end, offline: built by podman/buildah from a local Debian
base with python3 and host-built wheels, run as its unprivileged user with its config from a mounted
file and its secrets from a podman secret and an environment variable; Harbor's webhook for a push
of the acceld image itself makes the container convert it to eStargz, and `acceld check` passes."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from harness.container import PYTHON_BASE_RECIPE, build_context, limit_args, podman, python_base_rootfs
from harness.registry import RunningRegistry
from service_helpers import default_payload, post_event, resource, wait_finished, wait_for

import acceld

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
BASE_IMAGE = f"localhost/acceld-test-base:{PYTHON_BASE_RECIPE}"
WEBHOOK_AUTH = "Bearer container-webhook-secret"
API_TOKEN = "container-api-token"
ACCELD = str(Path(sys.executable).parent / "acceld")


@pytest.fixture(scope="module")
def acceld_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The image built from the Containerfile, tagged localhost/acceld:test-<random>; removed afterwards."""
    if shutil.which("podman") is None:
        pytest.fail("podman is not installed (Debian packages podman, buildah, runc)", pytrace=False)
    if podman("image", "exists", BASE_IMAGE, check=False).returncode != 0:
        rootfs = python_base_rootfs(ROOT / ".cache" / "testimages")
        podman("import", "--change", 'CMD ["python3"]', str(rootfs), BASE_IMAGE)
    context = build_context(ROOT, tmp_path_factory.mktemp("image") / "context")
    tag = f"localhost/acceld:test-{uuid.uuid4().hex[:8]}"
    podman(
        "build",
        "--format",
        "docker",  # HEALTHCHECK is a Docker image field
        "--pull=never",
        "--build-arg",
        f"BASE={BASE_IMAGE}",
        *limit_args(),
        "-t",
        tag,
        str(context),
        timeout=1200,
    )
    try:
        yield tag
    finally:
        podman("rmi", "-f", tag, check=False)
        podman("image", "prune", "-f", check=False)  # the untagged build stage


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_image_metadata(acceld_image: str) -> None:
    (config,) = json.loads(podman("image", "inspect", acceld_image).stdout)
    settings = config["Config"]
    assert settings["User"] == "10001:10001"
    assert "/var/lib/acceld" in settings["Volumes"]
    assert settings["Entrypoint"] == ["acceld"] and settings["Cmd"][0] == "serve"
    assert "ACCELD_HEALTH_URL" in " ".join(config["Healthcheck"]["Test"])
    assert "ACCELD_HEALTH_URL=http://127.0.0.1:2077/readyz" in settings["Env"]
    version = podman("run", "--rm", *limit_args(), acceld_image, "--version").stdout.strip()
    assert version == f"acceld {acceld.__version__}"


def test_webhook_converts_the_image_itself(
    acceld_image: str, registry_plain: RunningRegistry, tmp_path: Path
) -> None:
    host = registry_plain.host
    digest_file = tmp_path / "digest"
    podman(
        "push",
        "--tls-verify=false",
        "--digestfile",
        str(digest_file),
        acceld_image,
        f"docker://{host}/acceld/acceld:v1",
        timeout=900,
    )
    digest = digest_file.read_text().strip()

    port = _free_port()
    config = tmp_path / "acceld.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "registries": {host: {"plain_http": True}},
                "server": {"host": "127.0.0.1", "port": port},
                "api": {"token_env": "ACCELD_API_TOKEN"},
                "webhook": {"sources": {host: {"auth_header_file": "/run/secrets/acceld-webhook-auth"}}},
                "workers": {"concurrency": 1, "child_grace_seconds": 0},
                "rules": [{"name": "all", "drivers": [{"name": "estargz"}]}],
            }
        )
    )
    config.chmod(0o644)
    name = f"acceld-test-{uuid.uuid4().hex[:8]}"
    secret_file = tmp_path / "webhook-auth"
    secret_file.write_text(WEBHOOK_AUTH)
    podman("secret", "create", name, str(secret_file))
    podman("volume", "create", name)
    try:
        podman(
            "run",
            "-d",
            "--name",
            name,
            "--network",
            "host",  # the test registry listens on the host's 127.0.0.1
            *limit_args(),
            "-v",
            f"{name}:/var/lib/acceld",
            "-v",
            f"{config}:/etc/acceld/acceld.yaml:ro",
            "--secret",
            f"{name},target=acceld-webhook-auth",
            "-e",
            "ACCELD_CONFIG=/etc/acceld/acceld.yaml",
            "-e",
            f"ACCELD_API_TOKEN={API_TOKEN}",
            "-e",
            f"ACCELD_HEALTH_URL=http://127.0.0.1:{port}/readyz",
            acceld_image,
            "serve",
        )
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            try:
                return httpx.get(f"{url}/readyz", timeout=5).status_code == 200
            except httpx.HTTPError:
                running = podman("inspect", "--format", "{{.State.Running}}", name).stdout.strip()
                assert running == "true", podman("logs", name).stderr
                return False

        wait_for(ready, timeout=120, what="the container's /readyz")
        assert podman("healthcheck", "run", name, check=False).returncode == 0
        assert podman("exec", name, "id", "-u").stdout.strip() == "10001"
        assert "acceld.db" in podman("exec", name, "ls", "/var/lib/acceld").stdout

        assert post_event(url, default_payload("PUSH_ARTIFACT", []), auth="wrong").status_code == 401
        reply = post_event(
            url,
            default_payload("PUSH_ARTIFACT", [resource(host, "acceld/acceld", digest, "v1")]),
            auth=WEBHOOK_AUTH,
        )
        assert reply.status_code == 202, reply.text
        (accepted,) = reply.json()["tasks"]
        task_id = accepted["id"]
        api = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {API_TOKEN}"}, timeout=30)
        task = wait_finished(api, task_id, timeout=1200)
        assert task["status"] == "succeeded", f"{task}\n{podman('logs', name).stderr[-3000:]}"
        assert task["target"].endswith(":v1-esgz")
    finally:
        logs = podman("logs", name, check=False).stderr
        podman("rm", "-f", "-t", "5", name, check=False)
        podman("volume", "rm", "-f", name, check=False)
        podman("secret", "rm", name, check=False)
        print(logs[-5000:])

    host_config = tmp_path / "host.yaml"
    host_config.write_text(yaml.safe_dump({"registries": {host: {"plain_http": True}}}))
    checked = subprocess.run(
        [ACCELD, "check", f"{host}/acceld/acceld:v1-esgz", "--config", str(host_config)],
        capture_output=True,
        text=True,
        timeout=1200,
        env={**os.environ, "ACCELD_CACHE_DIR": str(tmp_path / "cache")},
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "OK, structure valid" in checked.stdout
