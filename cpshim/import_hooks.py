"""Post-import hooks: run a callback right after a watched module finishes executing.

This makes `apply()` independent of import order: a target whose module is not imported yet is
patched the moment it is. The finder only wraps the loader of watched names and is removed once
nothing is watched.
"""

from __future__ import annotations

import importlib.abc
import sys
import threading
from typing import Any, Callable

_lock = threading.RLock()
_callbacks: dict[str, Callable[[Any], None]] = {}
_busy = threading.local()


class _Loader(importlib.abc.Loader):
    def __init__(self, inner: Any, callback: Callable[[Any], None]) -> None:
        self._inner = inner
        self._callback = callback

    def create_module(self, spec):  # noqa: D401 - loader protocol
        return self._inner.create_module(spec)

    def exec_module(self, module) -> None:
        self._inner.exec_module(module)
        module.__loader__ = self._inner  # tools reading __loader__ see the real loader
        self._callback(module)

    def __getattr__(self, name: str) -> Any:  # get_source, get_filename, is_package, ...
        return getattr(self._inner, name)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname not in _callbacks or getattr(_busy, "name", None) == fullname:
            return None
        _busy.name = fullname
        try:
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    break
            else:
                return None
        finally:
            _busy.name = None
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _Loader(spec.loader, lambda module: _fire(fullname, module))
        return spec


_finder = _Finder()


def _fire(name: str, module: Any) -> None:
    with _lock:
        callback = _callbacks.pop(name, None)
        if not _callbacks and _finder in sys.meta_path:
            sys.meta_path.remove(_finder)
    if callback is not None:
        callback(module)


def when_imported(name: str, callback: Callable[[Any], None]) -> bool:
    """Call `callback(module)` now if `name` is imported (returns True), else right after its import."""
    with _lock:
        module = sys.modules.get(name)
        if module is None:
            _callbacks[name] = callback
            if _finder not in sys.meta_path:
                sys.meta_path.insert(0, _finder)
            return False
    callback(module)
    return True


def cancel(name: str) -> None:
    with _lock:
        _callbacks.pop(name, None)
        if not _callbacks and _finder in sys.meta_path:
            sys.meta_path.remove(_finder)

