"""Name → factory registries, so every pluggable piece is chosen by name from a study file.

Modelled on timm's `register_model` / `create_model`: code registers with a decorator, studies
name entries, and an unknown name fails with the nearest registered names instead of a KeyError.

A registry also says what its entries are called with: the leading `inputs` their caller passes (a mixer's
images, labels and generator; a model's shape) and `settings` the caller owns beside them (a mixer's
probability). Whatever else an entry's signature names is a *parameter* a study may set: `params` is the one
place that reads signatures, and registration refuses an entry that does not take the declared inputs.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
from typing import Any, Callable, Generic, Iterator, TypeVar

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
    def __init__(self, kind: str, inputs: tuple[str, ...] = (), settings: dict[str, Any] | None = None):
        self.kind, self.inputs, self.settings = kind, inputs, dict(settings or {})
        self._entries: dict[str, T] = {}
        self._params: dict[str, dict[str, inspect.Parameter]] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            key = name or getattr(obj, "__name__")
            if key in self._entries:
                raise ValueError(f"{self.kind} {key!r} is registered twice")
            self._check_inputs(key, obj)
            self._entries[key] = obj
            return obj

        return decorator

    def _check_inputs(self, key: str, obj) -> None:
        if not self.inputs:
            return
        signature = inspect.signature(obj)
        takes_any = any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values())
        missing = [i for i in self.inputs if i not in signature.parameters and not takes_any]
        if missing:
            raise TypeError(f"{self.kind} {key!r} must take {', '.join(self.inputs)}: it lacks "
                            f"{', '.join(missing)}")

    def get(self, name: str, field: str | None = None) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.unknown_message(name, field)) from None

    def params(self, name: str) -> dict[str, inspect.Parameter]:
        """The parameters a study may give entry `name`: its signature without the declared inputs, `*args`,
        `**kwargs` and a catch-all `_` (for a class, its constructor's)."""
        if name not in self._params:
            self._params[name] = {k: p for k, p in inspect.signature(self.get(name)).parameters.items()
                                  if k not in self.inputs and k != "_"
                                  and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        return self._params[name]

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
