"""What the ``buttress`` command's ops subcommands talk to: the service, or a local queue.

:class:`ServiceClient` calls a running ``buttress serve`` over HTTP, one method per
endpoint. :class:`LocalTasks` does the task operations directly on a queue
(``--queue sqlite:///…``). Both hand back the API's JSON shapes (a task is the
``TaskOut`` of ``GET /api/v1/tasks/{id}``), so the command renders one shape.

>>> with ServiceClient("http://127.0.0.1:8000", api_key="…") as client:
...     client.breakers()
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, Self, TypeVar

if TYPE_CHECKING:
    import httpx

    from buttress.tasks import Queue, Task
    from buttress.tasks._backend import QueueStats

__all__ = [
    "DEFAULT_URL",
    "LocalTasks",
    "RemoteTasks",
    "ServiceClient",
    "ServiceError",
    "ServiceUnreachableError",
    "TaskOps",
    "age",
]

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = 10.0
API = "/api/v1"

JSON = dict[str, Any]
T = TypeVar("T")


class ServiceError(Exception):
    """The service answered with an error (RFC 9457 problem details, usually).

    ``str()`` is one line: ``"404 Not Found: task not found"``.
    """

    def __init__(self, status: int, title: str, detail: str = "", code: str = "") -> None:
        self.status = status
        self.title = title
        self.detail = detail
        self.code = code
        text = f"{status} {title}"
        if detail and detail != title:
            text += f": {detail}"
        super().__init__(text)


class ServiceUnreachableError(Exception):
    """No answer from the service: refused, unresolvable, timed out, or not HTTP."""


def _problem(response: httpx.Response) -> ServiceError:
    """The :class:`ServiceError` for an error response, problem details or not."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "title" in body:
        return ServiceError(
            response.status_code,
            str(body["title"]),
            str(body.get("detail") or ""),
            str(body.get("code") or ""),
        )
    text = " ".join(response.text.split())[:200]
    return ServiceError(response.status_code, response.reason_phrase or "error", text)


class ServiceClient:
    """A small typed client of the ops API (``/api/v1``), for the command line.

    Every method raises :class:`ServiceError` for an error answer and
    :class:`ServiceUnreachableError` when the service can't be reached.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        import httpx  # noqa: PLC0415 - the web extra; only remote commands need it

        self.url = url.rstrip("/")
        headers = {"Accept": "application/json, application/problem+json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._http = httpx.Client(
            base_url=self.url, headers=headers, timeout=timeout, transport=transport
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # --- plumbing -----------------------------------------------------------------------

    def _send(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        ok: Sequence[int] = (),
    ) -> httpx.Response:
        import httpx  # noqa: PLC0415

        query = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            response = self._http.request(method, API + path, params=query, json=json)
        except httpx.TransportError as exc:
            reason = str(exc) or type(exc).__name__
            raise ServiceUnreachableError(
                f"cannot reach the buttress service at {self.url} ({reason}): is "
                "`buttress serve` running there? (set --url or BUTTRESS_URL)"
            ) from exc
        if response.is_error and response.status_code not in ok:
            raise _problem(response)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._send(method, path, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise ServiceUnreachableError(
                f"{self.url}{API}{path} did not answer JSON: is it a buttress service?"
            ) from None

    # --- health -------------------------------------------------------------------------

    def liveness(self) -> JSON:
        result: JSON = self._json("GET", "/health")
        return result

    def readiness(self) -> JSON:
        """The readiness report (a 503 report is returned, not raised: it is an answer)."""
        result: JSON = self._json("GET", "/health/ready", ok=(503,))
        if "components" not in result:  # a 503 from something in front of the service
            raise ServiceError(503, "Service Unavailable", str(result)[:200])
        return result

    # --- resilience ---------------------------------------------------------------------

    def breakers(self) -> list[JSON]:
        result: list[JSON] = self._json("GET", "/circuit-breakers")
        return result

    def breaker(self, name: str) -> JSON:
        result: JSON = self._json("GET", f"/circuit-breakers/{_segment(name)}")
        return result

    def reset_breaker(self, name: str) -> JSON:
        result: JSON = self._json("POST", f"/circuit-breakers/{_segment(name)}/reset")
        return result

    def force_open_breaker(self, name: str) -> JSON:
        result: JSON = self._json("POST", f"/circuit-breakers/{_segment(name)}/force-open")
        return result

    # --- cache --------------------------------------------------------------------------

    def cache_stats(self) -> JSON:
        result: JSON = self._json("GET", "/cache/stats")
        return result

    def cache_clear(self) -> None:
        self._send("POST", "/cache/clear")

    def cache_invalidate(self, *, tags: Iterable[str] = (), pattern: str | None = None) -> int:
        """Invalidate by tags and/or a glob pattern; the count of pattern matches."""
        body: JSON = {"tags": list(tags)}
        if pattern is not None:
            body["pattern"] = pattern
        result: JSON = self._json("POST", "/cache/invalidate", json=body)
        return int(result["count"])

    # --- tasks --------------------------------------------------------------------------

    def submit_task(
        self,
        name: str,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        priority: str | None = None,
    ) -> JSON:
        body: JSON = {"name": name, "args": list(args), "kwargs": dict(kwargs or {})}
        if priority is not None:
            body["priority"] = priority
        result: JSON = self._json("POST", "/tasks", json=body)
        return result

    def tasks(
        self,
        *,
        status: Sequence[str] | None = None,
        name: str | None = None,
        owner: str | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> JSON:
        """One page: ``{"tasks": [...], "cursor": ...}``, newest first."""
        params = {
            "status": list(status) if status else None,
            "name": name,
            "owner": owner,
            "cursor": cursor,
            "limit": limit,
        }
        result: JSON = self._json("GET", "/tasks", params=params)
        return result

    def task(self, task_id: str) -> JSON:
        result: JSON = self._json("GET", f"/tasks/{_segment(task_id)}")
        return result

    def cancel_task(self, task_id: str, *, force: bool = False) -> JSON:
        params = {"force": "true"} if force else None
        result: JSON = self._json("POST", f"/tasks/{_segment(task_id)}/cancel", params=params)
        return result

    def retry_task(self, task_id: str) -> JSON:
        result: JSON = self._json("POST", f"/tasks/{_segment(task_id)}/retry")
        return result

    def task_stats(self, *, owner: str | None = None) -> JSON:
        result: JSON = self._json("GET", "/tasks/stats", params={"owner": owner})
        return result

    def dead_letters(self, *, owner: str | None = None, limit: int = 100) -> JSON:
        params = {"owner": owner, "limit": limit}
        result: JSON = self._json("GET", "/dead-letters", params=params)
        return result

    def reprocess(self, ids: Sequence[str] | None = None, *, name: str | None = None) -> JSON:
        """Send dead tasks back to the queue: ``{"action", "count", "ids"}``."""
        body: JSON = {}
        if ids is not None:
            body["ids"] = list(ids)
        if name is not None:
            body["name"] = name
        result: JSON = self._json("POST", "/dead-letters/reprocess", json=body)
        return result

    def bulk(self, action: str, ids: Sequence[str]) -> JSON:
        """Cancel, retry or delete these tasks (admin): ``{"action", "count", "ids"}``."""
        body = {"action": action, "ids": list(ids)}
        result: JSON = self._json("POST", "/tasks/bulk", json=body)
        return result


def _segment(value: str) -> str:
    """``value`` as one path segment (a name with ``/`` or ``?`` stays one)."""
    import urllib.parse  # noqa: PLC0415

    return urllib.parse.quote(value, safe="")


# --- tasks, locally or remotely ---------------------------------------------------------------


class TaskOps(Protocol):
    """The task operations the command offers, on a local queue or the service."""

    where: str
    """What the operations act on, for messages: a queue URL or a service URL."""

    def list(
        self,
        *,
        status: Sequence[str] | None = None,
        name: str | None = None,
        owner: str | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> tuple[list[JSON], str | None]: ...
    def get(self, task_id: str) -> JSON: ...
    def cancel(self, task_id: str, *, force: bool = False) -> JSON: ...
    def retry(self, task_id: str) -> JSON: ...
    def cancel_many(self, ids: Sequence[str]) -> int: ...
    def reprocess(self, ids: Sequence[str]) -> int: ...
    def stats(self, *, owner: str | None = None) -> JSON: ...
    def close(self) -> None: ...


class RemoteTasks:
    """:class:`TaskOps` through a :class:`ServiceClient`."""

    def __init__(self, client: ServiceClient) -> None:
        self.client = client
        self.where = client.url

    def list(
        self,
        *,
        status: Sequence[str] | None = None,
        name: str | None = None,
        owner: str | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> tuple[list[JSON], str | None]:
        page = self.client.tasks(status=status, name=name, owner=owner, cursor=cursor, limit=limit)
        return list(page["tasks"]), page.get("cursor")

    def get(self, task_id: str) -> JSON:
        return self.client.task(task_id)

    def cancel(self, task_id: str, *, force: bool = False) -> JSON:
        return self.client.cancel_task(task_id, force=force)

    def retry(self, task_id: str) -> JSON:
        return self.client.retry_task(task_id)

    def cancel_many(self, ids: Sequence[str]) -> int:
        return int(self.client.bulk("cancel", ids)["count"])

    def reprocess(self, ids: Sequence[str]) -> int:
        return int(self.client.reprocess(ids)["count"])

    def stats(self, *, owner: str | None = None) -> JSON:
        return self.client.task_stats(owner=owner)

    def close(self) -> None:
        self.client.close()


def _task_view(task: Task) -> JSON:
    # The queue's modules load here, not on import: every command imports this module
    # (for DEFAULT_URL), and `buttress --version` stays fast.
    from buttress.tasks._views import task_view  # noqa: PLC0415

    return task_view(task)


def _stats_view(stats: QueueStats) -> JSON:
    from buttress.tasks._views import stats_view  # noqa: PLC0415 - see _task_view

    return stats_view(stats)


class LocalTasks:
    """:class:`TaskOps` straight on a :class:`~buttress.tasks.Queue` (no service needed)."""

    def __init__(self, queue: Queue, where: str) -> None:
        self.queue = queue
        self.where = where
        # One event loop for the command's life: the queue's calls are async.
        self._runner = asyncio.Runner()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._runner.run(coro)

    def list(
        self,
        *,
        status: Sequence[str] | None = None,
        name: str | None = None,
        owner: str | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> tuple[list[JSON], str | None]:
        page = self._run(
            self.queue.list(
                status=list(status) if status else None,
                name=name,
                owner=owner,
                cursor=cursor,
                limit=limit,
            )
        )
        return [_task_view(t) for t in page.tasks], page.cursor

    def get(self, task_id: str) -> JSON:
        return _task_view(self._run(self.queue.get(task_id)))

    def cancel(self, task_id: str, *, force: bool = False) -> JSON:
        return _task_view(self._run(self.queue.cancel(task_id, force=force)))

    def retry(self, task_id: str) -> JSON:
        return _task_view(self._run(self.queue.retry(task_id)))

    def cancel_many(self, ids: Sequence[str]) -> int:
        return len(self._run(self.queue.cancel_many(ids)))

    def reprocess(self, ids: Sequence[str]) -> int:
        return len(self._run(self.queue.reprocess(ids)))

    def stats(self, *, owner: str | None = None) -> JSON:
        return _stats_view(self._run(self.queue.stats(owner=owner)))

    def close(self) -> None:
        try:
            self.queue.close()
        finally:
            self._runner.close()


def age(timestamp: float | None, now: float | None = None) -> str:
    """``timestamp`` (wall-clock seconds) as a short age: ``"4s"``, ``"3m"``, ``"2h"``, ``"5d"``."""
    if timestamp is None:
        return "-"
    seconds = max(0.0, (time.time() if now is None else now) - timestamp)
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"
