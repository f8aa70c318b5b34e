"""Records: every "how did it go" question is answered here, never by reading logs."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 1
STATES = ("selected", "applied", "in-use", "pending-import", "not-needed", "failed", "reverted", "disabled")


@dataclass
class PatchRecord:
    id: str
    target: str
    group: str | None
    variant: str | None
    state: str
    support: str
    reason: str
    requires: dict[str, str] | None
    info: dict[str, Any] = field(default_factory=dict)
    conflicts: list[dict[str, str | None]] = field(default_factory=list)
    fingerprint: dict[str, Any] | None = None
    error: str | None = None
    kind: str = "patch"  # "uses": upstream code cpshim calls (torch), fingerprinted, never patched

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "kind": self.kind, "target": self.target, "group": self.group, "variant": self.variant,
            "state": self.state, "support": self.support, "reason": self.reason,
            "requires": dict(self.requires) if self.requires is not None else None,
            "info": _jsonable(self.info), "conflicts": list(self.conflicts),
            "fingerprint": _jsonable(self.fingerprint), "error": self.error,
        }


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str)) if value is not None else None


@dataclass
class Report:
    versions: dict[str, str | None]
    mode: str
    policy: str
    patches: list[PatchRecord]
    notices: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    ring: dict[str, Any] | None = None
    hypothetical: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "versions": dict(self.versions),
            "hypothetical": self.hypothetical,
            "mode": self.mode,
            "policy": self.policy,
            "settings": _jsonable(self.settings),
            "patches": [p.to_dict() for p in self.patches],
            "notices": _jsonable(self.notices),
            "ring": _jsonable(self.ring),
        }

    def __getitem__(self, patch_id: str) -> PatchRecord:
        for record in self.patches:
            if record.id == patch_id:
                return record
        raise KeyError(patch_id)

    def needed(self) -> list[PatchRecord]:
        return [p for p in self.patches if p.state != "not-needed"]

    def exit_code(self) -> int:
        """`cpshim check`: 0 all supported, 1 any unsupported, 2 some untested and none unsupported."""
        support = {p.support for p in self.needed()}
        if "unsupported" in support:
            return 1
        return 2 if "untested" in support else 0

    def format_table(self) -> str:
        lines = [f"cpshim report (mode: {self.mode}, policy: {self.policy}"
                 + (", hypothetical versions" if self.hypothetical else "") + ")"]
        lines.append("versions: " + ", ".join(f"{d} {v or '-'}" for d, v in self.versions.items()))
        for kind, title in (("patch", "patch"), ("uses", "uses (torch: not patched)")):
            rows = [(title, "variant", "state", "support")] + [
                (p.id, p.variant or "-", p.state, p.support) for p in self.patches if p.kind == kind
            ]
            widths = [max(len(r[i]) for r in rows) for i in range(4)]
            for row in rows if len(rows) > 1 else ():
                lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        for p in self.patches:
            lines.append(f"- {p.id}: {p.reason}")
        for n in self.notices:
            lines.append(f"! {n.get('reason')}")
        if self.ring:
            lines.append("ring: " + ", ".join(f"{k}={v}" for k, v in self.ring.items()))
        return "\n".join(lines)
