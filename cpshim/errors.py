"""Exceptions, the warning category, and conflicts as values (not strings)."""

from __future__ import annotations

from collections import namedtuple


class CpshimWarning(UserWarning):
    """Emitted under the default `warn` policy for anything that is not `supported`."""


class CpshimError(RuntimeError):
    """Base class of cpshim's errors."""


class RegistrationError(CpshimError):
    """The patch registry itself is inconsistent (a bug in cpshim, caught by its tests)."""


class UnsupportedVersionError(CpshimError):
    """Raised under the `strict` policy; names the installed version, the tested range and the fix."""


class ConfigurationError(CpshimError, ValueError):
    """A bad argument or environment value (policy, mode, strategy...)."""


class CpshimRuntimeError(CpshimError):
    """A patched call cannot do what was asked; the message names the cause and the fix."""


class DependencyConflict(namedtuple("DependencyConflict", ["dist", "required", "found"])):
    """`dist` must satisfy `required`; `found` is the installed version string (None: not installed)."""

    __slots__ = ()

    def describe(self) -> str:
        return f"{self.dist} {self.found or '(not installed)'} (needs {self.dist}{self.required})"

    def fix(self) -> str:
        return f"pip install '{self.dist}{self.required}'"

    def to_dict(self) -> dict[str, str | None]:
        return {"dist": self.dist, "required": self.required, "found": self.found}
