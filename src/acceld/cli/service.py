"""CLI commands of the service: `acceld serve`, `acceld sync`, `acceld tasks list|show|retry|cancel`."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from acceld.cli.app import FullSummaryGroup, app
from acceld.errors import AcceldError
from acceld.service.config import ServiceConfig, load_service_config

ServiceConfigOption = Annotated[
    Path | None, typer.Option("--config", envvar="ACCELD_CONFIG", help="Service YAML config file.")
]
UrlOption = Annotated[
    str | None, typer.Option("--url", envvar="ACCELD_URL", help="Service URL (default: from the config).")
]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token", envvar="ACCELD_API_TOKEN", help="Management API token (default: from the config)."
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the API's JSON.")]


class ApiClientError(AcceldError):
    """The management API refused a request or could not be reached."""


def _fail(exc: AcceldError) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(1)


@app.command()
def serve(
    config: ServiceConfigOption = None,
    host: Annotated[
        str | None, typer.Option("--host", help="Listen address (overrides server.host).")
    ] = None,
    port: Annotated[int | None, typer.Option("--port", help="Listen port (overrides server.port).")] = None,
) -> None:
    """Run the webhook service (default 127.0.0.1:2077, state in SQLite under the data directory)."""
    from acceld.service.server import run_server

    try:
        settings = load_service_config(config)
        overrides = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
        if overrides:
            settings = settings.model_copy(update={"server": settings.server.model_copy(update=overrides)})
        run_server(settings)
    except AcceldError as exc:
        raise _fail(exc) from None


@app.command()
def sync(
    config: ServiceConfigOption = None,
    drain: Annotated[
        bool, typer.Option("--drain", help="Also run the queued conversions here until the queue is empty.")
    ] = False,
) -> None:
    """Queue a conversion for every image the rules cover that has no converted counterpart."""
    from acceld.service.state import Service
    from acceld.service.sync import reconcile

    async def main() -> None:
        settings = load_service_config(config)
        service = Service(settings)
        try:
            report = await reconcile(settings, service.rules, service.store)
            typer.echo(
                f"repositories: {report.repositories}  images: {report.images}  "
                f"up to date: {report.up_to_date}  queued: {report.queued}  requeued: {report.requeued}"
            )
            for problem in report.errors:
                typer.echo(f"warning: {problem}", err=True)
            if drain:
                await _drain(service)
        finally:
            service.store.close()

    try:
        asyncio.run(main())
    except AcceldError as exc:
        raise _fail(exc) from None


@app.command()
def prune(
    config: ServiceConfigOption = None,
    yes: Annotated[bool, typer.Option("--yes", help="Delete them (default: only list them).")] = False,
) -> None:
    """List converted images whose source is gone, in the repositories the rules cover; --yes deletes."""
    from acceld.service.prune import prune as find_orphans
    from acceld.service.rules import RuleSet

    async def main() -> None:
        settings = load_service_config(config)
        report = await find_orphans(settings, RuleSet(settings.rules), delete=yes)
        for orphan in report.orphans:
            where = f"{orphan.repository}:{orphan.tag}" if orphan.tag else orphan.repository
            typer.echo(f"{where}@{orphan.digest}  (source {orphan.source} is gone)")
        for problem in report.errors:
            typer.echo(f"warning: {problem}", err=True)
        verb = f"deleted {len(report.deleted)} manifest(s)" if yes else "dry run, --yes deletes them"
        typer.echo(f"repositories: {report.repositories}  orphans: {len(report.orphans)}  {verb}")

    try:
        asyncio.run(main())
    except AcceldError as exc:
        raise _fail(exc) from None


async def _drain(service: Any) -> None:
    service.pool.start()
    try:
        while True:
            counts = await asyncio.to_thread(service.store.counts_by_status)
            if counts["queued"] == 0 and counts["running"] == 0:
                break
            await asyncio.sleep(0.5)
    finally:
        await service.pool.stop(service.config.workers.shutdown_grace_seconds)
    counts = await asyncio.to_thread(service.store.counts_by_status)
    typer.echo("  ".join(f"{status}: {n}" for status, n in counts.items()))


tasks_app = typer.Typer(
    cls=FullSummaryGroup, help="Inspect and manage the service's conversion tasks.", no_args_is_help=True
)


class _Api:
    def __init__(self, config: Path | None, url: str | None, token: str | None) -> None:
        settings: ServiceConfig | None = None
        if url is None or token is None:
            settings = load_service_config(config)
        if url is None:
            assert settings is not None
            host = settings.server.host
            host = "127.0.0.1" if host in ("0.0.0.0", "") else f"[{host}]" if ":" in host else host
            url = f"http://{host}:{settings.server.port}"
        if token is None:
            assert settings is not None
            token = settings.api_token()
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"}

    def call(self, method: str, path: str, params: dict[str, Any] | None = None) -> Any:
        import httpx  # loaded by the API commands only: every other command starts faster

        try:
            response = httpx.request(method, self.url + path, params=params, headers=self.headers, timeout=30)
        except httpx.HTTPError as exc:
            raise ApiClientError(f"cannot reach {self.url}: {exc}") from None
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code >= 400:
            message = body.get("message") if isinstance(body, dict) else None
            raise ApiClientError(f"{response.status_code}: {message or response.text[:200]}")
        return body


def _when(value: str | None) -> str:
    return value[:19].replace("T", " ") if value else "-"


def _shown_source(task: dict[str, Any]) -> str:
    """The source, with the tag a digest was pushed as (tag tasks differ only in their tag)."""
    tag = task.get("tag")
    return f"{task['source']} ({tag})" if tag and "@" in task["source"] else str(task["source"])


def _print_task(task: dict[str, Any]) -> None:
    fields = (
        "id",
        "kind",
        "status",
        "rule",
        "source",
        "tag",
        "driver",
        "options",
        "platforms",
        "operator",
        "events",
        "attempts",
        "max_attempts",
        "created",
        "started",
        "finished",
        "next_attempt",
        "target",
        "target_digest",
        "source_size",
        "target_size",
        "seconds",
        "layers_converted",
        "layers_cached",
        "error",
        "note",
        "parent_id",
    )
    for name in fields:
        value = task.get(name)
        if value in (None, [], {}):
            continue
        typer.echo(f"{name + ':':<18}{json.dumps(value) if isinstance(value, dict | list) else value}")


def _run(action: Any) -> None:
    try:
        action()
    except AcceldError as exc:
        raise _fail(exc) from None


@tasks_app.command("list")
def list_tasks(
    status: Annotated[
        str | None, typer.Option("--status", help="queued, running, succeeded, failed, …")
    ] = None,
    repository: Annotated[str | None, typer.Option("--repository", help="Full repository path.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=500)] = 50,
    offset: Annotated[int, typer.Option("--offset", min=0)] = 0,
    as_json: JsonOption = False,
    config: ServiceConfigOption = None,
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """List tasks, newest first."""

    def action() -> None:
        params = {k: v for k, v in (("status", status), ("repository", repository)) if v}
        page = _Api(config, url, token).call(
            "GET", "/api/v1/tasks", {**params, "limit": limit, "offset": offset}
        )
        if as_json:
            typer.echo(json.dumps(page, indent=2))
            return
        typer.echo(
            f"{'ID':<32}  {'KIND':<7}  {'STATUS':<9}  {'TRIES':>5}  {'CREATED':<19}  {'DRIVER':<11}  SOURCE"
        )
        for task in page["items"]:
            typer.echo(
                f"{task['id']:<32}  {task['kind']:<7}  {task['status']:<9}  {task['attempts']:>5}  "
                f"{_when(task['created']):<19}  {task['driver']:<11}  {_shown_source(task)}"
            )
            detail = task["error"] if task["status"] in ("failed", "skipped") else task.get("note")
            if detail:
                typer.echo(f"{'':<34}{detail[:100]}")
        typer.echo(f"{len(page['items'])} of {page['total']} tasks (offset {page['offset']})")

    _run(action)


def _task_command(method: str, suffix: str, help_text: str) -> Any:
    def command(
        task_id: Annotated[str, typer.Argument(help="Task ID.")],
        as_json: JsonOption = False,
        config: ServiceConfigOption = None,
        url: UrlOption = None,
        token: TokenOption = None,
    ) -> None:
        def action() -> None:
            task = _Api(config, url, token).call(method, f"/api/v1/tasks/{task_id}{suffix}")
            if as_json:
                typer.echo(json.dumps(task, indent=2))
            else:
                _print_task(task)

        _run(action)

    command.__doc__ = help_text
    return command


tasks_app.command("show")(_task_command("GET", "", "Show one task."))
tasks_app.command("retry")(_task_command("POST", "/retry", "Queue a failed or cancelled task again."))
tasks_app.command("cancel")(_task_command("POST", "/cancel", "Cancel a queued or running task."))


app.add_typer(tasks_app, name="tasks")
