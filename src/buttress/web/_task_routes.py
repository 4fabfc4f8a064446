"""``/tasks`` and ``/dead-letters``: the caller's own tasks, and the queue's upkeep.

A user acts as the owner of its tasks: it never sees, counts or changes another
owner's task, which answers 404 exactly as a task that does not exist (so ids
can't be probed). Admins see every task, and may narrow to one ``owner``.
"""

from __future__ import annotations

from collections.abc import Awaitable
from enum import Enum
from typing import Annotated

from fastapi import Path, Query

from buttress.errors import FieldError as Field_
from buttress.errors import ForbiddenError, ValidationError
from buttress.tasks import Page, Queue, TaskStatus
from buttress.web._auth import Admin, Caller, Principal, ServiceDep
from buttress.web._models import (
    BulkIn,
    BulkOut,
    CleanupIn,
    CountOut,
    PriorityName,
    QueueStatsOut,
    ReprocessIn,
    StatusName,
    TaskIn,
    TaskOut,
    TaskPageOut,
)
from buttress.web._router import API, router

TAGS: list[str | Enum] = ["tasks"]

TaskId = Path(min_length=1, max_length=64)


def _scope(caller: Principal, owner: str | None) -> str | None:
    """Whose tasks a request may see: a user's own; an admin's choice (all if none)."""
    if caller.is_admin:
        return owner
    if owner is not None and owner != caller.owner:
        raise ForbiddenError("a user can only see its own tasks")
    return caller.owner


def _check_task_name(queue: Queue, name: str) -> None:
    if name not in queue.tasks:
        known = ", ".join(sorted(queue.tasks)) or "none"
        raise ValidationError(
            errors=[Field_("body.name", f"no task {name!r} is registered (registered: {known})")]
        )


async def _page(listing: Awaitable[Page]) -> TaskPageOut:
    try:
        page = await listing
    except ValueError as exc:  # a cursor that isn't one of ours
        raise ValidationError(errors=[Field_("query.cursor", str(exc))]) from exc
    return TaskPageOut(tasks=[TaskOut.of(t) for t in page.tasks], cursor=page.cursor)


@router.post(API + "/tasks", tags=TAGS, status_code=202)
async def submit_task(body: TaskIn, service: ServiceDep, caller: Caller) -> TaskOut:
    """Queue a registered task, owned by the caller; 202 with the task."""
    _check_task_name(service.queue, body.name)
    try:
        task = await service.queue.enqueue(
            body.name,
            *body.args,
            kwargs=body.kwargs,
            priority=body.priority,
            delay=body.delay,
            owner=caller.owner,
            tags=body.tags,
            metadata=body.metadata,
            dedup_key=body.dedup_key,
            retries=body.retries,
            timeout=body.timeout,
        )
    except (TypeError, ValueError) as exc:
        raise ValidationError(errors=[Field_("body", str(exc))]) from exc
    return TaskOut.of(task)


@router.get(API + "/tasks", tags=TAGS)
async def list_tasks(
    service: ServiceDep,
    caller: Caller,
    *,
    status: Annotated[list[StatusName] | None, Query()] = None,
    priority: PriorityName | None = None,
    name: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    tag: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    owner: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    cursor: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> TaskPageOut:
    """The caller's tasks, newest first (an admin's: everyone's, or ``owner``'s)."""
    return await _page(
        service.queue.list(
            owner=_scope(caller, owner),
            status=status,
            priority=priority,
            name=name,
            tag=tag,
            cursor=cursor,
            limit=limit,
        )
    )


@router.get(API + "/tasks/stats", tags=TAGS)
async def task_stats(
    service: ServiceDep,
    caller: Caller,
    owner: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
) -> QueueStatsOut:
    """Counts by status and priority, timings and dead letters (the caller's own)."""
    return QueueStatsOut.of(await service.queue.stats(owner=_scope(caller, owner)))


@router.get(API + "/tasks/{task_id}", tags=TAGS)
async def get_task(service: ServiceDep, caller: Caller, task_id: str = TaskId) -> TaskOut:
    return TaskOut.of(await service.queue.get(task_id, owner=_scope(caller, None)))


@router.post(API + "/tasks/{task_id}/cancel", tags=TAGS)
async def cancel_task(
    service: ServiceDep,
    caller: Caller,
    task_id: str = TaskId,
    force: bool = False,
) -> TaskOut:
    """Cancel a waiting task, or ask a running one to stop (``force``: at once)."""
    task = await service.queue.cancel(task_id, owner=_scope(caller, None), force=force)
    return TaskOut.of(task)


@router.post(API + "/tasks/{task_id}/retry", tags=TAGS)
async def retry_task(service: ServiceDep, caller: Caller, task_id: str = TaskId) -> TaskOut:
    """Queue a failed, dead or cancelled task again; 409 for one in another state."""
    return TaskOut.of(await service.queue.retry(task_id, owner=_scope(caller, None)))


@router.post(API + "/tasks/cleanup", tags=TAGS)
async def cleanup_tasks(body: CleanupIn, service: ServiceDep, _: Admin) -> CountOut:
    """Delete finished tasks older than ``older_than`` seconds; how many went."""
    statuses = [TaskStatus(s) for s in body.statuses]
    return CountOut(count=await service.queue.cleanup(body.older_than, statuses))


@router.post(API + "/tasks/bulk", tags=TAGS)
async def bulk_action(body: BulkIn, service: ServiceDep, _: Admin) -> BulkOut:
    """Cancel, retry or delete the given ids, or every task matching the filter."""
    if body.ids is None and not (body.status or body.name or body.tag or body.owner):
        raise ValidationError("give ids or a filter (status, name, tag, owner)")
    where = {"owner": body.owner, "status": body.status, "name": body.name, "tag": body.tag}
    queue = service.queue
    if body.action == "delete":
        count = await queue.delete_many(body.ids, **where)  # type: ignore[arg-type]
        return BulkOut(action=body.action, count=count, ids=[])
    act = queue.cancel_many if body.action == "cancel" else queue.retry_many
    changed = await act(body.ids, **where)  # type: ignore[arg-type]
    return BulkOut(action=body.action, count=len(changed), ids=[t.id for t in changed])


@router.get(API + "/dead-letters", tags=TAGS)
async def dead_letters(
    service: ServiceDep,
    caller: Caller,
    owner: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    cursor: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> TaskPageOut:
    """Tasks that ran out of attempts (the caller's own)."""
    return await _page(
        service.queue.dead_letters(owner=_scope(caller, owner), cursor=cursor, limit=limit)
    )


@router.post(API + "/dead-letters/reprocess", tags=TAGS)
async def reprocess(body: ReprocessIn, service: ServiceDep, _: Admin) -> BulkOut:
    """Send dead tasks (these ids, or every dead task, or those of one name) back."""
    tasks = await service.queue.reprocess(body.ids, name=body.name)
    return BulkOut(action="reprocess", count=len(tasks), ids=[t.id for t in tasks])
