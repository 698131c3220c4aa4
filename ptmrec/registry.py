"""Lowercase-name registries (encoders, adapters): one entry per name, a duplicate is an error."""

from __future__ import annotations

from typing import Callable, TypeVar

T = TypeVar("T")


def registrar(table: dict[str, T], kind: str) -> Callable[[str], Callable[[T], T]]:
    """A decorator factory that adds entries to `table`: `@register("name")`."""

    def register_name(name: str) -> Callable[[T], T]:
        if name != name.lower():
            raise ValueError(f"{kind} names are lowercase, got {name!r}")

        def register(entry: T) -> T:
            if name in table:
                raise ValueError(f"{kind} {name!r} is already registered")
            table[name] = entry
            return entry

        return register

    return register_name
