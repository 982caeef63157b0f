"""Name → factory registries, so every pluggable piece is chosen by name from a study file.

Modelled on timm's `register_model` / `create_model`: code registers with a decorator, studies
name entries, and an unknown name fails with the nearest registered names instead of a KeyError.
"""

from __future__ import annotations

import difflib
import fnmatch
from typing import Callable, Generic, Iterator, TypeVar

from .errors import MixkdError

T = TypeVar("T")


class UnknownNameError(MixkdError):
    pass


def matching(names: list[str], pattern: str | None) -> list[str]:
    """The `names` a `mixkd list` PATTERN picks: as a shell pattern when it has wildcards, else as a substring;
    either way ignoring case (`list models resnet` finds ResNet18)."""
    if not pattern:
        return names
    glob = (pattern if any(c in pattern for c in "*?[") else f"*{pattern}*").lower()
    return [n for n in names if fnmatch.fnmatchcase(n.lower(), glob)]


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            key = name or getattr(obj, "__name__")
            if key in self._entries:
                raise ValueError(f"{self.kind} {key!r} is registered twice")
            self._entries[key] = obj
            return obj

        return decorator

    def get(self, name: str, field: str | None = None) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.unknown_message(name, field)) from None

    def unknown_message(self, name: object, field: str | None = None) -> str:
        where = f"{field}: " if field else ""
        close = difflib.get_close_matches(str(name), list(self._entries), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        return (f"{where}unknown {self.kind} {name!r}; {hint}"
                f"registered: {', '.join(self.names()[:40])}{' ...' if len(self) > 40 else ''}")

    def names(self, pattern: str | None = None) -> list[str]:
        return matching(sorted(self._entries), pattern)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
