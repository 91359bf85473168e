"""One small name -> object registry, used once per kind of network (networks, teacher-student and detection presets).

Every registry names the config key it serves, so a typo in a bundle override fails with that key, MONAI's
``look_up_option`` "did you mean" suggestion and the list of valid names.

Example::

    PRESETS: Registry[TeacherStudentPreset] = Registry("preset")
    PRESETS.register("demo", TeacherStudentPreset("resnet18", "resnet10_slim", "CPU demo"))
    PRESETS.get("dmeo")  # ValueError: `preset`: By 'dmeo', did you mean 'demo'? ...
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from monai.utils import look_up_option

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Named objects of one kind, looked up with a "did you mean" error naming the config key.

    It iterates over its names (``sorted(registry)``, ``name in registry``), so code that used a plain dict of
    names keeps working; :meth:`get` replaces ``dict[...]`` and raises ``ValueError`` instead of ``KeyError``.

    Args:
        key: the config key (or argument) the names are given under, e.g. ``"preset"``; quoted in errors.
        check: optional ``f(name, item)`` run at registration; it raises ``ValueError`` for an invalid item.
    """

    def __init__(self, key: str, check: Callable[[str, T], None] | None = None) -> None:
        self.key = key
        self._check = check
        self._items: dict[str, T] = {}

    def register(self, name: str, item: T) -> T:
        """Add ``item`` under ``name`` and return it.

        Raises:
            ValueError: ``name`` is taken, or ``check`` rejects the item.
        """
        if name in self._items:
            raise ValueError(f"`{self.key}`: '{name}' is already registered.")
        if self._check is not None:
            self._check(name, item)
        self._items[name] = item
        return item

    def get(self, name: str) -> T:
        """The item called ``name``.

        Raises:
            ValueError: unknown ``name``, naming :attr:`key` and the closest valid name.
        """
        try:
            item: T = look_up_option(name, self._items)
        except ValueError as err:
            raise ValueError(f"`{self.key}`: {err}") from None
        return item

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.key!r}, names={self.names()})"
