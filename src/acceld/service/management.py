"""The management API (`/api/v1/tasks…`, `/api/v1/notifications`): list, show, retry and cancel tasks;
completion notifications and their delivery. Bearer token required."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from acceld.service.api_models import (
    DeliveryPage,
    DeliveryView,
    ErrorBody,
    TaskKind,
    TaskPage,
    TaskStatus,
    TaskView,
)
from acceld.service.state import Service
from acceld.service.store import TaskFilter

bearer = HTTPBearer(
    scheme_name="ManagementToken",
    auto_error=False,
    description="api.token from the config (default: <data_dir>/api-token)",
)

_UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "Missing or wrong token"}
}
_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorBody, "description": "No such task"}}
_CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {"model": ErrorBody, "description": "Not allowed in this state"}
}
_UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: {"model": ErrorBody, "description": "Task store unavailable"}
}

_TASK_LINKS = {  # let OpenAPI clients (and schemathesis) follow task ids from one answer to the next
    name: {"operationId": name, "parameters": {"task_id": "$response.body#/id"}}
    for name in ("get_task", "retry_task", "cancel_task")
}
_PAGE_LINKS = {
    name: {"operationId": name, "parameters": {"task_id": "$response.body#/items/0/id"}}
    for name in ("get_task", "retry_task", "cancel_task")
}


class ApiError(Exception):
    """Answered as `{"code", "message"}` with `status` by the app's exception handler."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def management_router(service: Service) -> APIRouter:
    def authorized(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
        if credentials is None or not service.api_token_valid(credentials.credentials):
            raise ApiError(401, "ERR_UNAUTHORIZED", "missing or wrong bearer token")

    router = APIRouter(
        prefix="/api/v1/tasks",
        tags=["tasks"],
        dependencies=[Depends(authorized)],
        responses={**_UNAUTHORIZED, **_UNAVAILABLE},
    )

    @router.get(
        "",
        response_model=TaskPage,
        summary="List tasks, newest first",
        operation_id="list_tasks",
        responses={200: {"links": _PAGE_LINKS}},
    )
    async def list_tasks(
        status: TaskStatus | None = None,
        kind: TaskKind | None = None,
        registry: Annotated[str | None, Query(max_length=255)] = None,
        repository: Annotated[str | None, Query(max_length=255)] = None,
        driver: Annotated[str | None, Query(max_length=64)] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    ) -> TaskPage:
        filters = TaskFilter(
            status=status, registry=registry, repository=repository, driver=driver, kind=kind
        )
        items, total = await asyncio.to_thread(service.store.list_tasks, filters, limit, offset)
        return TaskPage(items=[TaskView.of(t) for t in items], total=total, limit=limit, offset=offset)

    @router.get(
        "/{task_id}",
        response_model=TaskView,
        responses={**_NOT_FOUND, 200: {"links": _TASK_LINKS}},
        summary="One task",
        operation_id="get_task",
    )
    async def get_task(task_id: str) -> TaskView:
        task = await asyncio.to_thread(service.store.get, task_id)
        if task is None:
            raise ApiError(404, "ERR_NOT_FOUND", f"no task {task_id}")
        return TaskView.of(task)

    @router.post(
        "/{task_id}/retry",
        operation_id="retry_task",
        response_model=TaskView,
        responses={**_NOT_FOUND, **_CONFLICT},
        summary="Queue a failed or cancelled task again",
    )
    async def retry_task(task_id: str) -> TaskView:
        task = await asyncio.to_thread(service.store.retry, task_id)
        if task is None:
            raise await _state_error(service, task_id, "only failed or cancelled tasks can be retried")
        service.pool.wake()
        return TaskView.of(task)

    @router.post(
        "/{task_id}/cancel",
        operation_id="cancel_task",
        response_model=TaskView,
        responses={**_NOT_FOUND, **_CONFLICT},
        summary="Cancel a queued or running task",
    )
    async def cancel_task(task_id: str) -> TaskView:
        task = await asyncio.to_thread(service.store.cancel, task_id)
        if task is None:
            raise await _state_error(service, task_id, "only queued or running tasks can be cancelled")
        return TaskView.of(task)

    return router


def notifications_router(service: Service) -> APIRouter:
    def authorized(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
        if credentials is None or not service.api_token_valid(credentials.credentials):
            raise ApiError(401, "ERR_UNAUTHORIZED", "missing or wrong bearer token")

    router = APIRouter(
        prefix="/api/v1/notifications",
        tags=["notifications"],
        dependencies=[Depends(authorized)],
        responses={**_UNAUTHORIZED, **_UNAVAILABLE},
    )

    @router.get(
        "",
        response_model=DeliveryPage,
        summary="Completion notifications and their delivery, newest first",
        operation_id="list_notifications",
    )
    async def list_notifications(
        task_id: Annotated[str | None, Query(max_length=32)] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    ) -> DeliveryPage:
        items, total = await asyncio.to_thread(service.store.deliveries, task_id, limit, offset)
        return DeliveryPage(
            items=[DeliveryView.of(d) for d in items], total=total, limit=limit, offset=offset
        )

    return router


async def _state_error(service: Service, task_id: str, message: str) -> ApiError:
    task = await asyncio.to_thread(service.store.get, task_id)
    if task is None:
        return ApiError(404, "ERR_NOT_FOUND", f"no task {task_id}")
    return ApiError(409, "ERR_CONFLICT", f"task is {task.status}: {message}")
