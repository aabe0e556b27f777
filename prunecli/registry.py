"""Registry: the one shape of every extension point (criteria, coupling rules, step handlers, ...).

Registering a key twice is an error; looking up an unknown key names the known ones and the
closest match::

    CRITERIA = Registry("criterion")

    @CRITERIA.register("l2")
    def l2(graph, *, module, seed): ...

    CRITERIA.lookup("l3")  # KeyError: unknown criterion 'l3'; known: l2; did you mean 'l2'?
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Hashable, Iterator
from typing import Generic, TypeVar

Key = TypeVar("Key", bound=Hashable)
Entry = TypeVar("Entry")


class Registry(Generic[Key, Entry]):
    """Entries by key, filled by the ``register`` decorator."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._entries: dict[Key, Entry] = {}

    def register(self, *keys: Key) -> Callable[[Entry], Entry]:
        """Decorator registering its target under each of ``keys``."""

        def decorate(entry: Entry) -> Entry:
            for key in keys:
                self.add(key, entry)
            return entry

        return decorate

    def add(self, key: Key, entry: Entry) -> None:
        """Register ``entry`` under ``key``; a key registered twice is a programming error."""
        if key in self._entries:
            raise ValueError(f"{self.what} '{_name(key)}' is registered twice")
        self._entries[key] = entry

    def get(self, key: Key) -> Entry | None:
        """The entry for ``key``, or None."""
        return self._entries.get(key)

    def lookup(self, key: Key) -> Entry:
        """The entry for ``key``; a KeyError naming the known keys when there is none."""
        if key not in self._entries:
            raise KeyError(unknown_name(self.what, _name(key), [_name(k) for k in self._entries]))
        return self._entries[key]

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __iter__(self) -> Iterator[Key]:
        return iter(self._entries)


def unknown_name(what: str, name: str, known: list[str]) -> str:
    """``unknown criterion 'l3'; known: l1, l2; did you mean 'l2'?``"""
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"unknown {what} '{name}'; known: {', '.join(sorted(known))}{hint}"


def _name(key: Hashable) -> str:
    return getattr(key, "__name__", str(key))
