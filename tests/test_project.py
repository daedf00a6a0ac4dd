"""Project-level promises: the suite's one-line answer when ../shared is missing, the licence, and
the webhook's published schema admitting only what the endpoint accepts."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import jsonschema_rs  # schemathesis's validator
import pytest

import acceld.formats.driver as contract
from acceld.service.harbor import CLOUDEVENTS_CONTENT_TYPE, PayloadError, example_payloads, parse_event
from acceld.service.webhook import openapi_operation

ROOT = Path(__file__).resolve().parent.parent


def test_missing_shared_folder_is_one_clear_line(tmp_path: Path) -> None:
    repo = tmp_path / "checkout"
    shutil.copytree(ROOT / "tests", repo / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", repo)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_reference.py"],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, output
    assert "Traceback" not in output and "error" not in output.lower().replace("errors", "")
    assert f"the tests need the reference folder {tmp_path / 'shared'}" in output
    assert len(output.splitlines()) <= 2, output  # pytest's "!!! Exit … !!!" banner, nothing else


def test_license_is_apache_2() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License")
    assert "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text and len(text) > 10_000


@pytest.mark.parametrize("specversion", ["1.0", "", "0.3", "1.0 ", "1"])
def test_cloudevents_schema_admits_exactly_what_the_endpoint_accepts(specversion: str) -> None:
    operation = openapi_operation({})
    schema = operation["requestBody"]["content"][CLOUDEVENTS_CONTENT_TYPE]["schema"]
    event = copy.deepcopy(example_payloads()[CLOUDEVENTS_CONTENT_TYPE])
    event["specversion"] = specversion
    admitted = jsonschema_rs.validator_for(schema).is_valid(event)
    try:
        parse_event(json.dumps(event).encode(), CLOUDEVENTS_CONTENT_TYPE)
        accepted = True
    except PayloadError:
        accepted = False
    assert admitted == accepted == (specversion == "1.0")


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_make_serve_stops_quietly(tmp_path: Path, stop: signal.Signals) -> None:
    """Ctrl-C (SIGINT to the whole process group) or SIGTERM: the service shuts down, make adds nothing."""
    env = {**os.environ, "ACCELD_DATA_DIR": str(tmp_path), "SERVE_ARGS": "--port 0"}
    env.pop("MAKEFLAGS", None)
    process = subprocess.Popen(
        ["make", "-s", "serve"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert process.stderr is not None
    started = []
    for line in process.stderr:
        started.append(line)
        if "Application startup complete" in line:
            break
    assert "Application startup complete" in "".join(started), "".join(started)
    os.killpg(process.pid, stop)
    _, rest = process.communicate(timeout=60)
    assert "Application shutdown complete" in rest
    assert "Terminated" not in rest and "make:" not in rest and "Traceback" not in rest, rest
    assert process.returncode in (0, -stop)


def test_architecture_doc_follows_the_driver_contract() -> None:
    """docs/architecture.md names every method of both driver protocols and only existing tests."""
    doc = (ROOT / "docs" / "architecture.md").read_text()
    for protocol in (contract.Driver, contract.ArtifactDriver):
        methods = [
            name for name in vars(protocol) if not name.startswith("_") and callable(vars(protocol)[name])
        ]
        assert methods
        for method in methods:
            assert f"{method}(" in doc, f"docs/architecture.md does not describe {protocol.__name__}.{method}"
    for test_file in re.findall(r"`(test_[a-z_*]+\.py)`", doc):
        assert list((ROOT / "tests").glob(test_file)), f"docs/architecture.md names missing {test_file}"


def test_contributing_commands_name_real_tests() -> None:
    text = (ROOT / "CONTRIBUTING.md").read_text()
    for path, name in re.findall(r"pytest -q (tests/[a-z_]+\.py)::([a-z_]+)", text):
        assert f"def {name}(" in (ROOT / path).read_text()
    for path in re.findall(r"pytest -q (tests/[a-z_]+\.py)", text):
        assert (ROOT / path).is_file()
    assert '-m "not slow"' in text
