"""The classes of a tile classifier, given once in the config: their names (index = label), the folder or CSV names
each accepts, and the positive class that the AUCs, the reports and the inference writer score.

The config form (``class_names`` in the MSI bundle) is a list with one entry per class, in label order; an entry is
the class name, or a list ``[name, alias, ...]`` whose aliases are other folder names or CSV labels of that class::

    ["benign", "malignant"]                                  # folders benign/ and malignant/
    [["MSS", "nonMSIH"], ["MSI", "MSIMUT", "MSIH"]]          # Kather's two namings (the default)
    ["normal", "adenoma", "carcinoma"]                       # three classes

Names and aliases are matched case-insensitively. The positive class (``positive_class``) is a name, an alias or an
index; by default the last class (MSI for Kather's classes).
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass
from typing import Any

__all__ = ["KATHER_CLASS_NAMES", "TileClasses", "check_num_classes", "tile_classes"]

logger = logging.getLogger(__name__)

KATHER_CLASS_NAMES: list[Any] = [["MSS", "nonMSIH"], ["MSI", "MSIMUT", "MSIH"]]
"""Config form of Kather et al.'s classes: label 0 MSS (folders ``MSS``/``nonMSIH``), 1 MSI (``MSIMUT``/``MSIH``)."""


@dataclass(frozen=True)
class TileClasses:
    """Class names (index = label), the names each class accepts (its name first) and the positive class.

    Build it with :func:`tile_classes`, which checks the config; the fields are then consistent.

    Args:
        names: readable name of each class, in label order.
        aliases: per class, every folder name or CSV label it accepts, its name first.
        positive: index of the positive class.
    """

    names: tuple[str, ...]
    aliases: tuple[tuple[str, ...], ...]
    positive: int

    @property
    def num_classes(self) -> int:
        """Number of classes C."""
        return len(self.names)

    @property
    def positive_name(self) -> str:
        """Name of the positive class."""
        return self.names[self.positive]

    @property
    def title(self) -> str:
        """``"MSI vs MSS"`` for two classes (positive first), ``"normal / adenoma / carcinoma"`` for more."""
        if self.num_classes == 2:
            return f"{self.positive_name} vs {self.names[1 - self.positive]}"
        return " / ".join(self.names)

    def config(self) -> list[Any]:
        """The normalised config form (a class without aliases as its name), as recorded beside ``model.pt``."""
        return [group[0] if len(group) == 1 else list(group) for group in self.aliases]

    def label_of(self, name: str) -> int | None:
        """The label of a folder name or CSV label (case-insensitive), or ``None`` when no class accepts it."""
        return self._lookup.get(name.strip().lower())

    def accepted(self, label: int) -> str:
        """``"MSI or MSIMUT or MSIH"``: the names class ``label`` accepts, for messages."""
        return " or ".join(self.aliases[label])

    def suggest(self, name: str) -> str:
        """`` Did you mean 'benign'?`` when ``name`` is close to an accepted name, else ``""``."""
        close = difflib.get_close_matches(name.lower(), list(self._lookup), n=1, cutoff=0.6)
        if not close:
            return ""
        label = self._lookup[close[0]]
        original = next(a for a in self.aliases[label] if a.lower() == close[0])
        return f" Did you mean {original!r}?"

    @property
    def _lookup(self) -> dict[str, int]:
        return {alias.lower(): label for label, group in enumerate(self.aliases) for alias in group}


def _group(entry: Any, index: int) -> tuple[str, ...]:
    group = [entry] if isinstance(entry, str) else entry
    if not isinstance(group, (list, tuple)) or not group or not all(isinstance(n, str) for n in group):
        raise ValueError(
            f"`class_names`[{index}] must be a class name or a list [name, alias, ...] of strings, got {entry!r}."
        )
    names = tuple(n.strip() for n in group)
    for name in names:
        if not name or name.startswith(".") or any(c in name for c in "/\\"):
            raise ValueError(f"`class_names`[{index}]: {name!r} cannot be a class folder name.")
        if name.lstrip("+-").isdigit():
            raise ValueError(
                f"`class_names`[{index}]: {name!r} looks like a class index (CSV labels may be indices); "
                "name the class with a word."
            )
    return names


def tile_classes(class_names: Any = None, positive_class: str | int | None = None) -> TileClasses:
    """Check the config's ``class_names`` and ``positive_class`` and build the :class:`TileClasses`.

    Args:
        class_names: one entry per class in label order, each a name or ``[name, alias, ...]`` (module docstring);
            ``None``: Kather's classes (:data:`KATHER_CLASS_NAMES`). A :class:`TileClasses` is returned as it is
            (with ``positive_class`` applied when given).
        positive_class: the class scored by the AUCs and written by inference: a name, an alias or an index;
            ``None``: the last class.

    Returns:
        The classes.

    Raises:
        ValueError: fewer than two classes, an entry that is not a name or a list of names, a name that cannot be a
            folder or looks like an index, a name given to two classes, or an unknown ``positive_class``; each
            message names the config key.
    """
    if isinstance(class_names, TileClasses):
        aliases = class_names.aliases
        positive_class = class_names.positive if positive_class is None else positive_class
    else:
        spec = KATHER_CLASS_NAMES if class_names is None else class_names
        if isinstance(spec, (str, dict)) or not isinstance(spec, (list, tuple)) or len(spec) < 2:
            raise ValueError(
                f"`class_names` must list at least two classes in label order, e.g. ['benign', 'malignant'] or "
                f"[['MSS', 'nonMSIH'], ['MSI', 'MSIMUT', 'MSIH']], got {spec!r}."
            )
        aliases = tuple(_group(entry, i) for i, entry in enumerate(spec))
    seen: dict[str, int] = {}
    for label, group in enumerate(aliases):
        for name in group:
            other = seen.setdefault(name.lower(), label)
            if other != label:
                raise ValueError(
                    f"`class_names`: {name!r} is given to class {other} ({aliases[other][0]}) and to class {label} "
                    f"({group[0]}); a folder name or label must name one class."
                )
    names = tuple(group[0] for group in aliases)
    classes = TileClasses(names=names, aliases=aliases, positive=len(names) - 1)
    return TileClasses(names=names, aliases=aliases, positive=_positive_index(classes, positive_class))


def _positive_index(classes: TileClasses, positive_class: str | int | None) -> int:
    if positive_class is None:
        return classes.num_classes - 1
    if isinstance(positive_class, int) and not isinstance(positive_class, bool):
        if 0 <= positive_class < classes.num_classes:
            return positive_class
    elif isinstance(positive_class, str):
        text = positive_class.strip()
        label = int(text) if text.isdigit() and int(text) < classes.num_classes else classes.label_of(text)
        if label is not None:
            return label
    raise ValueError(
        f"`positive_class` is {positive_class!r}, which is not a class of `class_names` {list(classes.names)}: "
        f"give one of these names or an index in [0, {classes.num_classes}).{classes.suggest(str(positive_class))}"
    )


def check_num_classes(classes: TileClasses, num_classes: int) -> None:
    """Raise when a configured ``num_classes`` contradicts ``class_names`` (it follows from them).

    Raises:
        ValueError: naming both keys and both values.
    """
    if isinstance(num_classes, bool) or num_classes != classes.num_classes:
        raise ValueError(
            f"`num_classes` is {num_classes!r} but `class_names` lists {classes.num_classes} classes "
            f"({', '.join(classes.names)}): drop the `num_classes` override (it follows from `class_names`) or list "
            f"{num_classes!r} classes in `class_names`."
        )
