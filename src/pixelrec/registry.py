"""Named registries: each backbone, item encoder and loss registers itself by name."""

from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable, Generic, TypeVar

from pixelrec.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """A name → class table with a factory that passes only the arguments a constructor accepts."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        def decorator(cls: type[T]) -> type[T]:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._entries[name] = cls
            cls.registered_name = name  # type: ignore[attr-defined]
            return cls

        return decorator

    def names(self) -> list[str]:
        return sorted(self._entries)

    def names_where(self, declares: Callable[[type[T]], bool]) -> list[str]:
        """The names whose class `declares` something (e.g. an image tower), sorted: for messages that
        list the choices that would work."""
        return [name for name in self.names() if declares(self._entries[name])]

    def find(self, name: Any) -> type[T] | None:
        """The class registered as `name`, or None (a name read from a record of another version)."""
        return self._entries.get(name) if isinstance(name, str) else None

    def get(self, name: str) -> type[T]:
        if name not in self._entries:
            hint = difflib.get_close_matches(name, self.names(), n=1)
            extra = f"; did you mean {hint[0]!r}?" if hint else ""
            raise UserError(f"unknown {self.kind} {name!r}{extra} (choose from {', '.join(self.names())})")
        return self._entries[name]

    def create(self, name: str, **kwargs: Any) -> T:
        """Build `name`, dropping None values and arguments its constructor does not take."""
        cls = self.get(name)
        accepted = constructor_parameters(cls)
        chosen = {k: v for k, v in kwargs.items() if v is not None and k in accepted}
        return cls(**chosen)


def constructor_parameters(cls: type) -> dict[str, inspect.Parameter]:
    """The keyword parameters of a class constructor, without `self`."""
    params = inspect.signature(cls.__init__).parameters
    return {k: p for k, p in params.items() if k != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
