"""What every registry here (samplers, engines) does with an entry: add it once by its name, or for the
length of a block only (a plug-in's tests)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar

Entry = TypeVar("Entry")


def add(table: dict[str, Entry], name: str, entry: Entry, what: str) -> Entry:
    if name in table:
        raise ValueError(f"a {what} named {name} is registered already")
    table[name] = entry
    return entry


@contextmanager
def added(table: dict[str, Entry], name: str, entry: Entry, what: str) -> Iterator[Entry]:
    """`entry` in `table` only inside the block."""
    add(table, name, entry, what)
    try:
        yield entry
    finally:
        del table[name]
