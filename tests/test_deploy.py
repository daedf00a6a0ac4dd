"""The deployment files: deploy/compose.yaml parsed and validated by docker-compose, its example
config loaded by acceld with its secrets, and deploy/acceld.service checked by systemd-analyze
(`verify` without a single warning, `security` exposure at most 2.0 of 10)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from acceld.service.config import load_service_config

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
ACCELD = Path(sys.executable).parent / "acceld"


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed (Debian package {package})", pytrace=False)
    return path


def test_compose_file_is_valid_and_joins_harbor() -> None:
    result = subprocess.run(
        [_tool("docker-compose", "docker-compose"), "-f", str(DEPLOY / "compose.yaml"), "config"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    service = resolved["services"]["acceld"]
    assert resolved["networks"]["harbor"] == {"external": True, "name": "harbor_harbor"}
    assert "harbor" in service["networks"]
    assert any(
        str(volume).endswith("/var/lib/acceld") or "/var/lib/acceld" in str(volume)
        for volume in service["volumes"]
    )
    assert {secret["source"] if isinstance(secret, dict) else secret for secret in service["secrets"]} == {
        "harbor-robot-secret",
        "harbor-webhook-auth",
        "acceld-api-token",
    }
    assert service["environment"]["ACCELD_CONFIG"] == "/etc/acceld/acceld.yaml"


def test_compose_validation_catches_mistakes(tmp_path: Path) -> None:
    broken = tmp_path / "compose.yaml"
    broken.write_text((DEPLOY / "compose.yaml").read_text().replace("    restart:", "    restrat:"))
    result = subprocess.run(
        [_tool("docker-compose", "docker-compose"), "-f", str(broken), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0 and "restrat" in result.stderr


def test_example_config_loads_with_its_secrets(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    for name, value in (
        ("harbor-robot-secret", "robot-password"),
        ("harbor-webhook-auth", "Bearer hook"),
        ("acceld-api-token", "api-token"),
    ):
        (secrets / name).write_text(value + "\n")
    config = tmp_path / "acceld.yaml"
    config.write_text((DEPLOY / "acceld.yaml").read_text().replace("/run/secrets/", f"{secrets}/"))
    settings = load_service_config(config)
    assert settings.api_token() == "api-token"
    assert settings.webhook_secrets() == {"harbor.example.com": "Bearer hook"}


def _unit_for_this_machine(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this installation (verify checks that the binary exists)."""
    unit = tmp_path / "acceld.service"
    text = (DEPLOY / "acceld.service").read_text()
    assert "ExecStart=/opt/acceld/bin/acceld serve" in text
    unit.write_text(text.replace("/opt/acceld/bin/acceld", str(ACCELD)))
    return unit


def test_systemd_unit_verifies_cleanly(tmp_path: Path) -> None:
    unit = _unit_for_this_machine(tmp_path)
    result = subprocess.run(
        [_tool("systemd-analyze", "systemd"), "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and not result.stderr.strip() and not result.stdout.strip(), result.stderr


def test_systemd_unit_is_sandboxed(tmp_path: Path) -> None:
    unit = _unit_for_this_machine(tmp_path)
    result = subprocess.run(
        [_tool("systemd-analyze", "systemd"), "security", "--offline=yes", "--threshold=20", str(unit)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    text = (DEPLOY / "acceld.service").read_text()
    for option in (
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=\n",
    ):
        assert option in text
