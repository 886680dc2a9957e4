"""Extension points as registries: the named declarations of one kind (methods, losses, answer parsers, task
sources, activation sites, adapter kinds, tasks built in Python), each declared once where its code lives and added
to with `register`, from ia2 itself or from user code alike. A registry loads the module of its built-in declarations
the first time it is read, so that the settings can name the allowed values without importing the code behind them,
and every table derived from a registry is computed when read: a declaration registered from user code counts
everywhere.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Generic, TypeVar

from ia2.errors import IA2Error

T = TypeVar("T")


class Registry(Generic[T]):
    """Declarations of one `kind` by name, in registration order; `home` names the modules declaring the built-ins."""

    def __init__(self, kind: str, *home: str) -> None:
        self.kind, self.home = kind, home
        self._items: dict[str, T] = {}
        self._loaded = False

    def register(self, name: str, item: T) -> T:
        """Declare `item` under `name`; a name already declared is refused rather than silently replaced (a built-in
        declared after yours, when the registry is first read, is refused the same way)."""
        if name in self._items:
            raise IA2Error(f"{self.kind} {name!r} is already declared: choose another name")
        self._items[name] = item
        return item

    def unregister(self, name: str) -> None:
        """Withdraw a declaration (a notebook redeclaring a method, a test cleaning up after itself)."""
        self._load()
        self._items.pop(name, None)

    def __getitem__(self, name: str) -> T:
        self._load()
        if name not in self._items:
            raise IA2Error(f"unknown {self.kind} {name!r} (known: {', '.join(self._items)})")
        return self._items[name]

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        self._load()
        return iter(list(self._items))

    def __len__(self) -> int:
        self._load()
        return len(self._items)

    def items(self) -> list[tuple[str, T]]:
        self._load()
        return list(self._items.items())

    def values(self) -> list[T]:
        self._load()
        return list(self._items.values())

    def names(self) -> tuple[str, ...]:
        """Every declared name, in registration order (a setting's allowed values)."""
        self._load()
        return tuple(self._items)

    def _load(self) -> None:
        """Import the modules of the built-in declarations once; they register them as they load."""
        if not self._loaded:
            self._loaded = True
            for module in self.home:
                importlib.import_module(module)


METHODS: Registry = Registry("method", "ia2.training.methods")
LOSSES: Registry = Registry("loss", "ia2.training.losses")
PARSERS: Registry = Registry("answer parser", "ia2.data.parsers")
SOURCES: Registry = Registry("task source", "ia2.data.tasks", "ia2.model.synthetic")
SITES: Registry = Registry("activation site", "ia2.model.taps")
ADAPTER_KINDS: Registry = Registry("adapter kind", "ia2.config.adapter_kinds")
TASKS: Registry = Registry("task")  # tasks built in Python (`ia2.data.tasks.register`), loadable by name
