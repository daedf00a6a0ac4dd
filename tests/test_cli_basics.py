"""What a new operator meets first: `--version`, whole command summaries in `--help`, the YAML config's
errors with line and column, and `inspect` naming each layer's format and the image's accessories."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from harness.registry import RunningRegistry
from harness.testimages import ImageSet

import acceld
import acceld.cli as cli
from acceld.cli import app
from acceld.convert.describe import image_kind, layer_format
from acceld.oci.models import Descriptor, Manifest

ACCELD = str(Path(sys.executable).parent / "acceld")
GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DIGEST = "sha256:" + "ab" * 32


def run(*args: str, columns: int = 80) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": str(columns)}
    return subprocess.run([ACCELD, *args], capture_output=True, text=True, timeout=120, env=env)


def test_version_is_the_package_version() -> None:
    result = run("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"acceld {importlib.metadata.version('acceld')}"
    assert acceld.__version__ == importlib.metadata.version("acceld")


def _first_sentence(text: str) -> str:
    paragraph = " ".join(text.strip().split("\n\n")[0].split())
    return paragraph.split(". ")[0].rstrip(".")


@pytest.mark.parametrize("group", [[], ["tasks"]])
def test_help_lists_whole_command_summaries(group: list[str]) -> None:
    command = (
        app if not group else next(g.typer_instance for g in app.registered_groups if g.name == group[0])
    )
    assert command is not None
    result = run(*group, "--help")
    assert result.returncode == 0, result.stderr
    listed = " ".join(result.stdout.split())
    for registered in command.registered_commands:
        assert registered.callback is not None and registered.callback.__doc__
        summary = _first_sentence(registered.callback.__doc__)
        assert summary in listed, f"{summary!r} cut short in:\n{result.stdout}"
    assert "..." not in result.stdout.split("Commands:")[1]


def test_check_platform_help_says_what_it_selects() -> None:
    result = run("check", "--help", columns=200)
    line = next(line for line in result.stdout.splitlines() if "--platform" in line)
    assert "to check" in line and "to convert" not in line


@pytest.mark.parametrize(
    ("text", "position", "what"),
    [
        ("registries:\n  h.test:\n    username: [a\n", "line 4, column 1", "not valid YAML"),
        ("registries:\n  h.test:\n\tplain_http: true\n", "line 3, column 1", "not valid YAML"),
        (
            "registries:\n  h.test:\n    plain_http: maybe\n",
            "line 3, column 17",
            "registries.h.test.plain_http",
        ),
        (
            "server:\n  port: 2077\nworkers:\n  concurrency: lots\n",
            "line 4, column 16",
            "workers.concurrency",
        ),
    ],
)
def test_yaml_errors_name_line_and_column(tmp_path: Path, text: str, position: str, what: str) -> None:
    config = tmp_path / "acceld.yaml"
    config.write_text(text)
    command = ["sync"] if "workers" in text else ["inspect", "oci:/nonexistent"]
    result = run(*command, "--config", str(config))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith(f"error: config {config}") and position in lines[0] and what in lines[0]


@pytest.mark.parametrize(
    ("layer", "expected"),
    [
        (Descriptor(mediaType=GZIP, digest=DIGEST, size=1), "gzip"),
        (Descriptor(mediaType="application/vnd.oci.image.layer.v1.tar+zstd", digest=DIGEST, size=1), "zstd"),
        (Descriptor(mediaType="application/vnd.docker.image.rootfs.diff.tar", digest=DIGEST, size=1), "tar"),
        (
            Descriptor(
                mediaType=GZIP,
                digest=DIGEST,
                size=1,
                annotations={"containerd.io/snapshot/stargz/toc.digest": DIGEST},
            ),
            "eStargz",
        ),
        (
            Descriptor(
                mediaType="application/vnd.oci.image.layer.v1.tar+zstd",
                digest=DIGEST,
                size=1,
                annotations={"io.github.containers.zstd-chunked.manifest-checksum": DIGEST},
            ),
            "zstd:chunked",
        ),
        (
            Descriptor(
                mediaType="application/vnd.oci.image.layer.nydus.blob.v1",
                digest=DIGEST,
                size=1,
                annotations={"containerd.io/snapshot/nydus-blob": "true"},
            ),
            "Nydus blob",
        ),
        (
            Descriptor(
                mediaType="application/vnd.oci.image.layer.nydus.blob.v1",
                digest=DIGEST,
                size=1,
                annotations={
                    "containerd.io/snapshot/nydus-blob": "true",
                    "containerd.io/snapshot/nydus-ref": DIGEST,
                },
            ),
            "Nydus zran blob",
        ),
        (
            Descriptor(
                mediaType=GZIP,
                digest=DIGEST,
                size=1,
                annotations={
                    "containerd.io/snapshot/nydus-bootstrap": "true",
                    "containerd.io/snapshot/nydus-fs-version": "6",
                },
            ),
            "Nydus bootstrap",
        ),
        (
            Descriptor(
                mediaType="application/octet-stream",
                digest=DIGEST,
                size=1,
                annotations={
                    "com.amazon.soci.image-layer-digest": DIGEST,
                    "com.amazon.soci.span-size": "4194304",
                },
            ),
            "SOCI zTOC",
        ),
    ],
)
def test_layer_formats(layer: Descriptor, expected: str) -> None:
    assert layer_format(layer) == expected


def test_soci_index_kind() -> None:
    config = Descriptor(mediaType="application/vnd.amazon.soci.index.v2+json", digest=DIGEST, size=2)
    assert image_kind(Manifest(config=config, layers=[])) == "SOCI index v2"


def _write_config(tmp_path: Path, registry: RunningRegistry) -> Path:
    path = tmp_path / "acceld.yaml"
    path.write_text(yaml.safe_dump({"registries": {registry.host: {"plain_http": True}}}))
    return path


CONVERSIONS = (  # driver options, tag suffix (None: untagged), what inspect calls the result's layers
    (["--driver", "estargz"], "-esgz", "eStargz"),
    (["--driver", "zstdchunked"], "-zstdchunked", "zstd:chunked"),
    (["--driver", "nydus"], "-nydus", "Nydus blob"),
    (["--driver", "nydus", "--oci-ref"], "-nydus-oci-ref", "Nydus zran blob"),
    (["--driver", "soci", "--min-layer-size", "0"], "-soci", None),
    (["--driver", "soci", "--min-layer-size", "0", "--soci-version", "v1"], None, None),
)


def test_inspect_shows_layer_formats_and_accessories(
    test_images: ImageSet, registry_plain: RunningRegistry, tmp_path: Path
) -> None:
    config = _write_config(tmp_path, registry_plain)
    source = f"{registry_plain.host}/cli/formats:v1"
    env = {**os.environ, "ACCELD_CACHE_DIR": str(tmp_path / "cache")}
    copied = subprocess.run(
        [ACCELD, "copy", test_images.busybox_amd64.ref, source, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert copied.returncode == 0, copied.stderr
    for options, _, _ in CONVERSIONS:
        converted = subprocess.run(
            [ACCELD, "convert", source, *options, "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
        assert converted.returncode == 0, converted.stderr

    shown = run("inspect", source, "--config", str(config), columns=200)
    assert shown.returncode == 0, shown.stderr
    assert "Kind:       image" in shown.stdout
    layer_lines = shown.stdout.split("Layers:")[1].split("Accessories:")[0]
    assert " gzip " in layer_lines
    accessories = shown.stdout.split("Accessories: ")[1]
    assert accessories.startswith(f"{len(CONVERSIONS)}\n"), shown.stdout
    for kind in (
        "eStargz image",
        "zstd:chunked image",
        "Nydus image",
        "Nydus zran image",
        "SOCI-enabled image index",
        "SOCI index v1",
    ):
        assert kind in accessories, shown.stdout

    for _, suffix, layer_kind in CONVERSIONS:
        if layer_kind is None:
            continue
        view = run("inspect", source + suffix, "--config", str(config), columns=200)
        assert view.returncode == 0, view.stderr
        if layer_kind.startswith("Nydus"):
            assert " Nydus bootstrap " in view.stdout, view.stdout
        assert f" {layer_kind} " in view.stdout, view.stdout
        assert "Accessories: 0" in view.stdout

    soci = run("inspect", source + "-soci", "--config", str(config), columns=200)
    assert soci.returncode == 0, soci.stderr
    assert "Kind:       SOCI-enabled image index" in soci.stdout
    soci_index = next(line.split()[1] for line in soci.stdout.splitlines() if "soci.index.v2" in line)
    repository = source.rsplit(":", 1)[0]
    ztocs = run("inspect", f"{repository}@{soci_index}", "--config", str(config), columns=200)
    assert "Kind:       SOCI index v2" in ztocs.stdout and " SOCI zTOC " in ztocs.stdout, ztocs.stdout


_IMPORTED_AFTER_CONVERT = """
import sys
from acceld.cli import main
sys.argv = ["acceld", "convert", *sys.argv[1:]]
try:
    main()
finally:
    unneeded = {"httpx", "h11", "anyio", "yaml", "acceld.cli.service", "acceld.service.config"}
    print("unneeded modules:", *sorted(set(sys.modules) & unneeded))
"""


def convert_in_script(script: str, test_images: ImageSet, tmp_path: Path, *options: str) -> str:
    """What `script` (which runs `acceld convert` with its arguments) prints, converting the busybox
    image between layouts."""
    source, target = f"oci:{test_images.layout}:busybox-amd64", f"oci:{tmp_path / 'out'}:conv"
    result = subprocess.run(
        [sys.executable, "-c", script, source, target, *options], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_converting_between_layouts_never_loads_the_http_client_or_yaml(
    test_images: ImageSet, tmp_path: Path
) -> None:
    """httpx (with the CLI it brings along) costs ~0.12 s of CPU per process: only a registry needs
    it; yaml only a config file; the service's commands and configuration only the service."""
    printed = convert_in_script(_IMPORTED_AFTER_CONVERT, test_images, tmp_path, "-d", "estargz")
    assert printed.splitlines()[-1] == "unneeded modules:", printed


_LOADED_AFTER_CONVERT = """
import gc
import sys
from acceld.cli import main
module = sys.argv.pop()
sys.argv = ["acceld", "convert", *sys.argv[1:]]
try:
    main()
finally:
    print("garbage collector on:", gc.isenabled(), module, "loaded:", module in sys.modules)
"""


@pytest.mark.parametrize(
    ("driver", "writer"), [("zstdchunked", "numpy"), ("nydus", "acceld.formats.nydus.blob")]
)
def test_a_conversion_loads_its_layer_writer_only_in_the_workers(
    test_images: ImageSet, tmp_path: Path, driver: str, writer: str
) -> None:
    """A layer writer (zstd:chunked's brings numpy, ~0.2 s of CPU) is the fork server's to import,
    not the CLI's at start-up; the CLI loads its commands with the garbage collector off, then
    turns it back on."""
    options = ("-d", driver, "--no-cache", writer)
    printed = convert_in_script(_LOADED_AFTER_CONVERT, test_images, tmp_path, *options)
    assert printed.splitlines()[-1] == f"garbage collector on: True {writer} loaded: False", printed


@pytest.mark.parametrize(
    ("args", "driver"),
    [
        (["oci:a:b"], "estargz"),
        (["oci:a:b", "-d", "nydus"], "nydus"),
        (["oci:a:b", "-dzstdchunked"], "zstdchunked"),
        (["--driver=soci", "oci:a:b"], "soci"),
        (["-d", "nydus", "oci:a:b", "--driver", "zstdchunked"], "zstdchunked"),
        (["oci:a:b", "--", "-d", "nydus"], "estargz"),
    ],
)
def test_the_driver_is_read_from_convert_arguments_as_click_reads_it(args: list[str], driver: str) -> None:
    assert cli._driver_argument(args) == driver


_FORK_SERVER_BEFORE_APP = """
import sys
from multiprocessing import forkserver
import acceld.cli as cli
sys.argv = ["acceld", "convert", *sys.argv[1:]]
load_app = cli._load_app

def load_and_tell(command):
    running = forkserver._forkserver._forkserver_pid is not None
    print("fork server running before the app:", running, "pydantic loaded:", "pydantic" in sys.modules)
    return load_app(command)

cli._load_app = load_and_tell
cli.main()
"""


def test_convert_starts_its_fork_server_before_importing_the_app(
    test_images: ImageSet, tmp_path: Path
) -> None:
    """The fork server's start-up (an interpreter and the driver's imports) overlaps the CLI's own."""
    printed = convert_in_script(_FORK_SERVER_BEFORE_APP, test_images, tmp_path, "-d", "nydus", "--no-cache")
    assert "fork server running before the app: True pydantic loaded: False" in printed, printed


_CONSOLE_SCRIPT = """
import atexit, sys

class TornDown:
    def __del__(self):
        print("torn down")

kept = TornDown()
atexit.register(print, "atexit handlers ran")
sys.argv = ["acceld", *sys.argv[1:]]
from acceld.cli import run
run()
"""


@pytest.mark.parametrize(
    ("args", "code", "stdout", "stderr"),
    [
        (["--version"], 0, f"acceld {acceld.__version__}\n", ""),
        (["convert", "oci:/nonexistent:x", "-d", "nosuch"], 1, "", "error: unknown driver 'nosuch'"),
        (["convert"], 2, "", "Missing argument"),
    ],
)
def test_the_console_script_exits_without_the_interpreter_teardown(
    args: list[str], code: int, stdout: str, stderr: str
) -> None:
    """Its output is flushed, its exit code kept and atexit handlers run; objects are left to the
    process's end instead of being freed one by one."""
    result = subprocess.run(
        [sys.executable, "-c", _CONSOLE_SCRIPT, *args], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == code, result.stderr
    assert result.stdout == stdout + "atexit handlers ran\n"
    assert stderr in result.stderr
