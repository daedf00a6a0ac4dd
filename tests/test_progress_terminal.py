"""Progress on a real terminal: `acceld convert` runs inside tmux (a pseudo-terminal with a screen) and
the test reads the screen — finished items as plain lines with their outcome and speed, failures
as failures, no rich markup eaten and no log decorations."""

from __future__ import annotations

import io
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml
from harness.registry import RunningRegistry
from harness.testimages import ImageSet
from rich.console import Console

from acceld.progress import RichProgress

ACCELD = str(Path(sys.executable).parent / "acceld")
WIDTH = 200


def run_in_terminal(tmp_path: Path, argv: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run `argv` in a detached tmux session; return its exit code and the whole screen (with history)."""
    if shutil.which("tmux") is None:
        pytest.fail("tmux is not installed (Debian package tmux)", pytrace=False)
    script = tmp_path / "run.sh"
    exports = "".join(f"export {name}={shlex.quote(value)}\n" for name, value in env.items())
    script.write_text(f"{exports}{shlex.join(argv)}\necho __exit=$?\nsleep 600\n")
    tmux = ["tmux", "-L", f"acceld-test-{uuid.uuid4().hex[:8]}", "-f", "/dev/null"]
    subprocess.run(
        [*tmux, "new-session", "-d", "-x", str(WIDTH), "-y", "50", "sh", str(script)], check=True, timeout=30
    )
    try:
        deadline = time.monotonic() + 300
        while True:
            screen = subprocess.run(
                [*tmux, "capture-pane", "-p", "-J", "-S", "-"], capture_output=True, text=True, timeout=30
            ).stdout
            found = re.search(r"^__exit=(\d+)$", screen, re.MULTILINE)
            if found:
                return int(found.group(1)), screen[: found.start()]
            assert time.monotonic() < deadline, f"the command did not finish:\n{screen}"
            time.sleep(0.3)
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True, timeout=30)


def _assert_plain(screen: str) -> None:
    assert "progress.py" not in screen and "Traceback" not in screen, screen
    assert not re.search(r"\[\d\d:\d\d:\d\d\]", screen), screen
    assert "?" not in screen, screen  # rich's unknown speed or time


def test_convert_on_a_terminal(
    test_images: ImageSet, registry_plain: RunningRegistry, tmp_path: Path
) -> None:
    config = tmp_path / "acceld.yaml"
    config.write_text(yaml.safe_dump({"registries": {registry_plain.host: {"plain_http": True}}}))
    source = f"{registry_plain.host}/terminal/busybox:v1"
    copied = subprocess.run(
        [ACCELD, "copy", test_images.busybox_amd64.ref, source, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert copied.returncode == 0, copied.stderr
    env = {"ACCELD_CACHE_DIR": str(tmp_path / "cache"), "TERM": "xterm-256color", "COLUMNS": str(WIDTH)}
    code, screen = run_in_terminal(
        tmp_path, [ACCELD, "convert", source, "--driver", "estargz", "--config", str(config)], env
    )
    assert code == 0, screen
    _assert_plain(screen)
    lines = screen.splitlines()
    speed = r"\(\d+(\.\d)? [kMG]?B in \d+\.\ds, \d+(\.\d)? [kMG]?B/s\)"
    assert any(re.fullmatch(rf"fetch [0-9a-f]{{12}}: done {speed}\s*", line) for line in lines), screen
    assert any(re.fullmatch(rf"convert [0-9a-f]{{12}}: estargz .* {speed}\s*", line) for line in lines), (
        screen
    )
    assert any(re.fullmatch(rf"push [0-9a-f]{{12}}: uploaded {speed}\s*", line) for line in lines), screen
    assert "1 layer(s) converted, 0 from cache" in screen
    assert "failed" not in screen


def test_failure_on_a_terminal(test_images: ImageSet, tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    shutil.copytree(test_images.layout, layout)
    manifest = test_images.busybox_amd64.read_json()
    layer = layout / "blobs" / "sha256" / manifest["layers"][0]["digest"].split(":")[1]
    data = bytearray(layer.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, wrong digest
    layer.write_bytes(bytes(data))
    env = {"ACCELD_CACHE_DIR": str(tmp_path / "cache"), "TERM": "xterm-256color", "COLUMNS": str(WIDTH)}
    argv = [ACCELD, "convert", f"oci:{layout}:busybox-amd64", f"oci:{tmp_path / 'out'}:v1", "--no-cache"]
    code, screen = run_in_terminal(tmp_path, argv, env)
    assert code == 1, screen
    _assert_plain(screen)
    lines = [line.rstrip() for line in screen.splitlines() if line.strip()]
    assert any(re.fullmatch(r"convert [0-9a-f]{12}: failed \(.*\)", line) for line in lines), screen
    assert "1 of 1 transfers failed" in lines, screen
    assert lines[-1].startswith("error: ") and "digest" in lines[-1], screen


def test_markup_in_descriptions_and_outcomes_is_shown_as_text() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120, color_system=None)
    with RichProgress(console) as progress:
        progress.start("a", "push [bold]x[/bold]", 10)
        progress.advance("a", 10)
        progress.finish("a", "[done]")
        progress.start("b", "fetch [y]", 10)
        progress.finish("b", "failed")
        progress.log("note [red]z[/red]")
    text = out.getvalue()
    assert "push [bold]x[/bold]: [done] (10 B in" in text
    assert "fetch [y]: failed (" in text
    assert "note [red]z[/red]" in text
    assert "1 of 2 transfers failed" in text
