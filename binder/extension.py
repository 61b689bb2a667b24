"""One registry helper for every extension point of binder (timm's ``register_model`` /
``list_models`` idea, in one small class).

Each kind of extension (modalities, anchors, pretrained names, index engines, evaluation datasets)
is a :class:`Registry`: ``register(name, obj)`` (or ``@registry.register("name")``),
``get(name)``, ``list(pattern)`` with shell wildcards. On first use a registry imports its
built-in modules (a package's modules are scanned, so a new built-in is one new file) and the
entry points of its group, so a third-party package extends binder by declaring
``[project.entry-points."binder.<kind>"]`` in its own ``pyproject.toml``. What registers is
checked against the kind's contract at once (usually a ``typing.Protocol``, see
:func:`protocol_check`): a plugin learns what it lacks when it is imported, not deep in a run.
"""
from __future__ import annotations

import fnmatch
import importlib
import inspect
import logging
import pkgutil
from importlib.metadata import entry_points
from typing import Any, Callable, Dict, Generic, Iterator, List, Optional, Sequence, Tuple, Type, TypeVar

from binder.errors import BinderError, BinderInputError, MissingDependencyError

log = logging.getLogger(__name__)

T = TypeVar("T")
Check = Callable[[str, str, Any], None]  # (kind, name, object): raises to refuse


def protocol_members(protocol: type) -> List[str]:
    """The attribute and method names a ``typing.Protocol`` (or any class used as one) declares,
    its bases' included (``object``'s and ``Protocol``'s own excluded)."""
    names: List[str] = []
    for klass in reversed(protocol.__mro__):
        if klass in (object, Generic) or klass.__name__ in ("Protocol",) or klass.__module__ == "typing":
            continue
        own = list(getattr(klass, "__annotations__", {}))
        own += [n for n, v in vars(klass).items() if callable(v) or isinstance(v, (property, classmethod,
                                                                                   staticmethod))]
        names += [n for n in own if (not n.startswith("_") or n == "__call__") and n not in names]
    return names


def missing_members(obj: Any, protocol: type) -> List[str]:
    """What ``obj`` (a class or an instance) lacks of ``protocol``'s members."""
    fields = getattr(obj, "__dataclass_fields__", {})
    return [n for n in protocol_members(protocol) if not hasattr(obj, n) and n not in fields]


def protocol_check(protocol: type) -> Check:
    """A registry check that refuses an object lacking any member of ``protocol``, naming them all."""

    def check(kind: str, name: str, obj: Any) -> None:
        missing = missing_members(obj, protocol)
        if missing:
            raise BinderInputError(f"{kind} {name!r} ({_describe(obj)}) does not implement "
                                   f"{protocol.__name__}: it lacks {', '.join(missing)}")

    return check


def _describe(obj: Any) -> str:
    target = obj if inspect.isclass(obj) or inspect.isfunction(obj) else type(obj)
    return f"{target.__module__}.{target.__qualname__}"


class Registry(Generic[T]):
    """Named extensions of one kind.

    Args:
        kind: What is registered, for messages (``"index engine"``).
        group: The entry-point group third-party packages declare (``"binder.index_engines"``).
        builtin: Modules or packages imported on first use; a package's public modules are all
            imported (each registers itself).
        check: Called as ``check(kind, name, obj)`` at registration; raises to refuse ``obj``.
        error: The error class for unknown names (a :class:`BinderError`).
        replace: What registering a taken name does: ``"warn"`` (replace, warning when another
            module takes it over) or ``"error"`` (refuse, unless ``register(..., replace=True)``).
    """

    def __init__(self, kind: str, *, group: Optional[str] = None, builtin: Sequence[str] = (),
                 check: Optional[Check] = None, error: Type[BinderError] = BinderInputError,
                 replace: str = "error") -> None:
        self.kind, self.group, self.builtin = kind, group, tuple(builtin)
        self.check, self.error, self.replace_policy = check, error, replace
        self._items: Dict[str, T] = {}
        self._origin: Dict[str, str] = {}
        self.failed: Dict[str, str] = {}  # plugin or module -> why it could not be imported
        self._discovered = False

    # ----- registering ------------------------------------------------------------------------

    def register(self, name: str, obj: Optional[T] = None, *, replace: bool = False) -> Any:
        """Register ``obj`` under ``name`` (returns it); without ``obj``, a decorator."""
        if obj is None:
            return lambda target: self.register(name, target, replace=replace)
        if not isinstance(name, str) or not name.strip():
            raise BinderInputError(f"a {self.kind} name must be a non-empty string, got {name!r}")
        if self.check is not None:
            self.check(self.kind, name, obj)
        origin = _describe(obj)
        old = self._items.get(name)
        if old is not None and old is not obj and old != obj and not replace:
            reloaded = origin == self._origin[name] and (inspect.isclass(obj) or inspect.isfunction(obj))
            if self.replace_policy == "error" and not reloaded:
                raise BinderInputError(f"{self.kind} {name!r} is already registered by {self._origin[name]}; "
                                       "pass replace=True to replace it")
            if origin.rsplit(".", 1)[0] != self._origin[name].rsplit(".", 1)[0]:
                log.warning("%s %r registered by %s replaces the one from %s", self.kind, name, origin,
                            self._origin[name])
        self._items[name], self._origin[name] = obj, origin
        return obj

    def unregister(self, name: str) -> Optional[T]:
        """Remove ``name`` (tests, plugins that withdraw); returns what was there."""
        self._origin.pop(name, None)
        return self._items.pop(name, None)

    # ----- discovery --------------------------------------------------------------------------

    def discover(self) -> None:
        """Import the built-in modules and the entry points of :attr:`group` (once)."""
        if self._discovered:
            return
        self._discovered = True
        for target in self.builtin:
            for module in _modules(target, self.failed):
                self._load(module, module)
        if self.group:
            for ep in entry_points(group=self.group):
                if not any(ep.value.startswith(b) for b in self.builtin):
                    self._load(ep.name, ep.value)

    def _load(self, label: str, target: str) -> None:
        try:
            module, _, attr = target.partition(":")
            obj: Any = importlib.import_module(module)
            if attr:
                for part in attr.split("."):
                    obj = getattr(obj, part)
                if label not in self._items and not inspect.ismodule(obj):
                    self.register(label, obj)
        except Exception as err:  # a broken plugin must not take the others down
            self.failed[label] = f"{type(err).__name__}: {err}"
            log.warning("could not load %s plugin %s (%s): %s", self.kind, label, target, err)

    # ----- reading ----------------------------------------------------------------------------

    def get(self, name: str) -> T:
        """The object registered as ``name``; an error naming the known ones otherwise."""
        self.discover()
        if name in self._items:
            return self._items[name]
        hint = f" (plugin {name!r} failed to load: {self.failed[name]})" if name in self.failed else ""
        known = ", ".join(self.list()) or "none"
        raise self.error(f"unknown {self.kind} {name!r}{hint}; registered: {known}")

    def list(self, pattern: str = "*") -> List[str]:
        """Registered names matching a shell wildcard ``pattern``, sorted."""
        self.discover()
        return sorted(n for n in self._items if fnmatch.fnmatch(n, pattern))

    def registered(self) -> List[str]:
        """The names registered so far, without discovering more (no import happens)."""
        return sorted(self._items)

    def items(self) -> List[Tuple[str, T]]:
        self.discover()
        return sorted(self._items.items())

    def origin(self, name: str) -> str:
        """Where ``name``'s object is defined (``module.qualname``)."""
        self.get(name)
        return self._origin[name]

    def __contains__(self, name: object) -> bool:
        self.discover()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.list())

    def __len__(self) -> int:
        return len(self.list())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self._items)} registered)"


def import_modules(target: str) -> List[str]:
    """Import ``target`` and, when it is a package, every public module of it (each registering
    what it defines, as discovery does); returns the names imported. A module that fails to
    import is logged and skipped."""
    failed: Dict[str, str] = {}
    names = _modules(target, failed)
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as err:
            _skipped(name, err)
    return names


def _skipped(name: str, err: Exception) -> None:
    """Log a module that did not import: quietly when it needs an optional extra the user has not
    installed (it says so when used), as a warning otherwise."""
    level = logging.DEBUG if isinstance(err, MissingDependencyError) else logging.WARNING
    log.log(level, "could not import %s: %s: %s", name, type(err).__name__, err)


def _modules(target: str, failed: Dict[str, str]) -> List[str]:
    """``target`` itself, or every public module of the package ``target``."""
    try:
        module = importlib.import_module(target)
    except Exception as err:
        failed[target] = f"{type(err).__name__}: {err}"
        _skipped(target, err)
        return []
    if not hasattr(module, "__path__"):
        return [target]
    found = sorted(pkgutil.iter_modules(module.__path__), key=lambda i: i.name)
    return [f"{target}.{info.name}" for info in found if not info.name.startswith("_")]
