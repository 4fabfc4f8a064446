"""Every named primitive, findable by name: for metrics, the dashboard and the ops API."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from typing import Any, Protocol, TypeVar, runtime_checkable

__all__ = ["Registry", "default_registry"]

T = TypeVar("T")


@runtime_checkable
class Named(Protocol):
    """Anything a registry can hold (a protocol): it has a name and reports metrics."""

    @property
    def name(self) -> str: ...

    def metrics(self) -> Any: ...


class Registry:
    """Named primitives by name.

    The registry holds them weakly: a breaker that its program dropped leaves the
    registry too, so tests and short-lived objects do not pile up. A new primitive
    under a name already taken replaces the old one, the way redefining a
    module-level breaker on reload should.

    >>> registry = Registry()
    >>> breaker = CircuitBreaker("payments", registry=registry)
    >>> registry.get("payments") is breaker
    True
    """

    def __init__(self) -> None:
        self._items: dict[str, weakref.ref[Any]] = {}
        self._lock = threading.Lock()

    def register(self, primitive: Named) -> None:
        name = primitive.name
        with self._lock:
            self._items[name] = weakref.ref(primitive, self._forget(name))

    def _forget(self, name: str) -> Any:
        def forget(ref: weakref.ref[Any]) -> None:
            with self._lock:
                if self._items.get(name) is ref:
                    del self._items[name]

        return forget

    def unregister(self, name: str) -> None:
        with self._lock:
            self._items.pop(name, None)

    def get(self, name: str, kind: type[T] | None = None) -> T | Any | None:
        """The primitive called ``name`` (of type ``kind``, if given), or ``None``."""
        ref = self._items.get(name)
        primitive = None if ref is None else ref()
        if kind is not None and not isinstance(primitive, kind):
            return None
        return primitive

    def __getitem__(self, name: str) -> Any:
        primitive = self.get(name)
        if primitive is None:
            known = ", ".join(sorted(self.names())) or "none"
            raise KeyError(f"no primitive named {name!r} is registered (registered: {known})")
        return primitive

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def names(self) -> list[str]:
        return sorted(name for name, ref in list(self._items.items()) if ref() is not None)

    def all(self) -> list[Any]:
        """Live primitives, sorted by name."""
        live = [(name, ref()) for name, ref in list(self._items.items())]
        return [
            primitive
            for name, primitive in sorted(live, key=lambda item: item[0])
            if primitive is not None
        ]

    def of_type(self, kind: type[T]) -> list[T]:
        """Live primitives of one type, sorted by name: ``registry.of_type(CircuitBreaker)``."""
        return [primitive for primitive in self.all() if isinstance(primitive, kind)]

    def __iter__(self) -> Iterator[Any]:
        return iter(self.all())

    def __len__(self) -> int:
        return len(self.names())

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


default_registry: Registry = Registry()
"""The process-wide registry every named primitive joins unless given ``registry=``."""
