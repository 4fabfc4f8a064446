"""Every named primitive, findable by name: for metrics, the dashboard and the ops API."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from typing import Any, Protocol, TypeVar, overload, runtime_checkable

__all__ = ["Registry", "default_registry"]

T = TypeVar("T")


@runtime_checkable
class Named(Protocol):
    """Anything a registry can hold (a protocol): it has a name and reports metrics."""

    @property
    def name(self) -> str: ...

    def metrics(self) -> Any: ...


class Registry:
    """Named primitives, by kind and name.

    A name is unique within a kind: a breaker and a retry may both be called
    "payments", and ``get("payments", CircuitBreaker)`` finds the breaker. A new
    primitive under a name its kind already uses replaces the old one, the way
    redefining a module-level breaker on reload should.

    The registry holds primitives weakly: one that its program dropped leaves
    the registry too, so tests and short-lived objects do not pile up.

    >>> registry = Registry()
    >>> breaker = CircuitBreaker("payments", registry=registry)
    >>> registry.get("payments", CircuitBreaker) is breaker
    True
    """

    def __init__(self) -> None:
        self._items: dict[tuple[type, str], weakref.ref[Any]] = {}
        # Re-entrant: a weakref callback can run inside register() when the
        # allocation there triggers a garbage collection.
        self._lock = threading.RLock()

    def register(self, primitive: Named) -> None:
        key = (type(primitive), primitive.name)
        with self._lock:
            self._items[key] = weakref.ref(primitive, self._forget(key))

    def _forget(self, key: tuple[type, str]) -> Any:
        def forget(ref: weakref.ref[Any]) -> None:
            with self._lock:
                if self._items.get(key) is ref:
                    del self._items[key]

        return forget

    def unregister(self, name: str, kind: type | None = None) -> None:
        """Remove ``name`` (of ``kind``, if given; else of every kind)."""
        with self._lock:
            for key in [k for k in self._items if k[1] == name]:
                if kind is None or issubclass(key[0], kind):
                    del self._items[key]

    def _live(self) -> list[tuple[str, str, Any]]:
        with self._lock:
            entries = list(self._items.items())
        live = [(name, kind.__name__, ref()) for (kind, name), ref in entries]
        return sorted((entry for entry in live if entry[2] is not None), key=lambda e: e[:2])

    @overload
    def get(self, name: str) -> Any | None: ...
    @overload
    def get(self, name: str, kind: type[T]) -> T | None: ...
    def get(self, name: str, kind: type[Any] | None = None) -> Any | None:
        """The primitive called ``name`` (of type ``kind``), or ``None``.

        Without ``kind``, a name that several kinds use is ambiguous: that raises
        ``LookupError`` listing the kinds, rather than guessing.
        """
        found = [
            primitive
            for entry_name, _, primitive in self._live()
            if entry_name == name and (kind is None or isinstance(primitive, kind))
        ]
        if len(found) > 1:
            kinds = ", ".join(type(p).__name__ for p in found)
            raise LookupError(f"{name!r} names a {kinds}; pass kind= to choose one")
        return found[0] if found else None

    def __getitem__(self, name: str) -> Any:
        primitive = self.get(name)
        if primitive is None:
            known = ", ".join(self.names()) or "none"
            raise KeyError(f"no primitive named {name!r} is registered (registered: {known})")
        return primitive

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and any(entry[0] == name for entry in self._live())

    def names(self) -> list[str]:
        """Names in use, sorted, each once."""
        return sorted({entry[0] for entry in self._live()})

    def all(self) -> list[Any]:
        """Live primitives, sorted by name and then kind."""
        return [entry[2] for entry in self._live()]

    def of_type(self, kind: type[T]) -> list[T]:
        """Live primitives of one type, sorted by name: ``registry.of_type(CircuitBreaker)``."""
        return [primitive for primitive in self.all() if isinstance(primitive, kind)]

    def __iter__(self) -> Iterator[Any]:
        return iter(self.all())

    def __len__(self) -> int:
        return len(self._live())

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


default_registry: Registry = Registry()
"""The process-wide registry every named primitive joins unless given ``registry=``."""
