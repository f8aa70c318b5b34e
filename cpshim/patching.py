"""Install and remove one wrapper per target, keeping the exact original for revert.

The original is the raw class-dict entry found through the MRO (`vars(cls)[name]`), so revert
restores the very same object (a function, property or staticmethod), or deletes cpshim's entry when
the attribute was inherited.
"""

from __future__ import annotations

import functools
import sys
import warnings
from collections import namedtuple

from .errors import CpshimWarning

TYPE_CHECKING = False  # typing costs import time; annotations are strings here
if TYPE_CHECKING:
    from typing import Any, Callable

MARK = "__cpshim_patch__"
_MISSING = object()

if TYPE_CHECKING:  # dispatch(patch_id, original_bound_callable, self, args, kwargs) -> result
    Dispatch = Callable[[str, Callable[..., Any], Any, tuple, dict], Any]


class Installed(namedtuple("Installed", ["owner", "name", "raw", "own", "wrapper"])):
    """One installed wrapper: `raw` is the original class-dict entry; `own` says it was defined on
    `owner` itself (revert restores it) rather than inherited (revert deletes cpshim's entry)."""

    __slots__ = ()


def resolve(module_name: str, attr_path: tuple[str, ...]) -> tuple[Any, str, Any, bool]:
    """(owner, name, raw original, defined on owner itself); AttributeError names what is missing."""
    obj: Any = sys.modules[module_name]
    for part in attr_path[:-1]:
        obj = getattr(obj, part)
    name = attr_path[-1]
    chain = obj.__mro__ if isinstance(obj, type) else (obj,)
    for klass in chain:
        if name in vars(klass):
            return obj, name, vars(klass)[name], klass is obj
    raise AttributeError(f"{module_name}:{'.'.join(attr_path)} does not exist in the installed version")


class Gate:
    """A patch's on-switch for hot upstream paths: while closed, its wrapper calls upstream directly.

    The patch's owner opens it while the implementation has work to do (attention routing: while a
    sharded step is in flight in some thread), so that a path called per layer per token (generation's
    attention lookups) costs one attribute read over upstream otherwise. `hold()` keeps it open for good
    (a strict-policy patch that must raise on every call)."""

    __slots__ = ("open", "_users", "_held")

    def __init__(self) -> None:
        self.open, self._users, self._held = False, 0, False

    def enter(self) -> None:
        self._users += 1
        self.open = True

    def leave(self) -> None:
        self._users = max(0, self._users - 1)
        self.open = self._held or self._users > 0

    def hold(self) -> None:
        self._held = self.open = True

    def release(self) -> None:
        self._held = False
        self.open = self._users > 0


def _wrap_function(patch_id: str, func: Callable[..., Any], dispatch: Dispatch) -> Callable[..., Any]:
    @functools.wraps(func)
    def wrapper(self, *args, **kwargs):
        return dispatch(patch_id, func.__get__(self, type(self)), self, args, kwargs)

    setattr(wrapper, MARK, patch_id)
    return wrapper


def _wrap_gated(patch_id: str, func: Callable[..., Any], dispatch: Dispatch, gate: Gate) -> Callable[..., Any]:
    """A method that runs upstream itself while the gate is closed. A lookup `(self, key)` gets a wrapper
    without */** packing on the closed path (it would cost more than the lookup); any other method passes its
    arguments through (a module's forward, which costs far more than the packing)."""
    code = getattr(func, "__code__", None)
    if code is None or code.co_argcount != 2 or code.co_flags & 0x0C or code.co_kwonlyargcount:
        @functools.wraps(func)
        def method(self, *args, **kwargs):
            if gate.open:
                return dispatch(patch_id, func.__get__(self, type(self)), self, args, kwargs)
            return func(self, *args, **kwargs)

        setattr(method, MARK, patch_id)
        return method

    @functools.wraps(func)
    def wrapper(self, key):
        if gate.open:
            return dispatch(patch_id, func.__get__(self, type(self)), self, (key,), {})
        return func(self, key)

    setattr(wrapper, MARK, patch_id)
    return wrapper


def _wrap_module_function(patch_id: str, func: Callable[..., Any], dispatch: Dispatch) -> Callable[..., Any]:
    """A module-level function (looked up as a global by its callers): no `self`, the implementation gets None."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        return dispatch(patch_id, func, None, args, kwargs)

    setattr(wrapper, MARK, patch_id)
    return wrapper


def make_wrapper(patch_id: str, raw: Any, dispatch: Dispatch, owner: Any = None, gate: Gate | None = None) -> Any:
    """A wrapper of the same descriptor kind as `raw` (function or property); a module's function stays one.
    With a `gate` (methods only), the wrapper is upstream itself while the gate is closed."""
    if owner is not None and not isinstance(owner, type):
        if not callable(raw):
            raise TypeError(f"cpshim cannot wrap {type(raw).__name__} objects (patch {patch_id})")
        return _wrap_module_function(patch_id, raw, dispatch)
    if isinstance(raw, property):
        fget = _wrap_function(patch_id, raw.fget, dispatch)  # type: ignore[arg-type]
        wrapped = property(fget, raw.fset, raw.fdel, raw.__doc__)
        return wrapped
    if callable(raw) and hasattr(raw, "__get__") and not isinstance(raw, (staticmethod, classmethod)):
        return _wrap_function(patch_id, raw, dispatch) if gate is None else _wrap_gated(patch_id, raw, dispatch, gate)
    raise TypeError(f"cpshim cannot wrap {type(raw).__name__} objects (patch {patch_id})")


def is_wrapper(obj: Any, patch_id: str | None = None) -> bool:
    inner = obj.fget if isinstance(obj, property) else obj
    mark = getattr(inner, MARK, None)
    return mark is not None and (patch_id is None or mark == patch_id)


def install(patch_id: str, module_name: str, attr_path: tuple[str, ...], dispatch: Dispatch,
            wrapper: Any = None, gate: Gate | None = None) -> Installed:
    """Wrap the target; reuse `wrapper` if given (one wrapper per target for the process's life)."""
    owner, name, raw, own = resolve(module_name, attr_path)
    if is_wrapper(raw, patch_id):  # already ours (found in a base class after an earlier install)
        raise RuntimeError(f"{module_name}:{'.'.join(attr_path)} is already wrapped by cpshim")
    if wrapper is None:
        wrapper = make_wrapper(patch_id, raw, dispatch, owner, gate)
    setattr(owner, name, wrapper)
    return Installed(owner, name, raw, own, wrapper)


def uninstall(inst: Installed) -> bool:
    """Restore the original only where cpshim's wrapper is still in place; else warn and leave it."""
    current = vars(inst.owner).get(inst.name, _MISSING)
    if current is not inst.wrapper:
        warnings.warn(
            f"cpshim: {inst.owner.__qualname__}.{inst.name} was replaced after cpshim patched it; "
            "leaving the newer object in place (revert the other patch first)",
            CpshimWarning, stacklevel=3,
        )
        return False
    if inst.own:
        setattr(inst.owner, inst.name, inst.raw)
    else:
        delattr(inst.owner, inst.name)
    return True
