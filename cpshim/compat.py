"""cpshim's tested version matrix, for downstream code: "does cpshim work with these versions?".

Reads ``cpshim/_data/matrix.json`` (shipped in the wheel; written by ``compat_matrix/render.py``
from compat_matrix/matrix.toml and the result files of the last matrix run). Imports none of torch,
transformers or accelerate.

    import cpshim.compat
    cpshim.compat.cells()                       # the tested cells, oldest first
    cpshim.compat.supported(transformers="5.10.4", accelerate="1.13.0")
    cpshim.compat.architecture("gemma3_text")  # a row of compat_matrix/ARCHITECTURES.md

A downstream noxfile can run its own sessions over cpshim's matrix::

    import nox, cpshim.compat

    @nox.session
    @nox.parametrize("cell", [nox.param(c, id=c.id) for c in cpshim.compat.cells()])
    def tests(session, cell):
        session.install(*cell.requirements(), "torch==" + cell.torch)
        ...
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Architecture", "Cell", "Support", "architecture", "cells", "load", "supported"]

_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_data", "matrix.json")
_DATA: dict[str, Any] | None = None


def load() -> dict[str, Any]:
    """The raw shipped data (``{}``-like skeleton when it is missing)."""
    global _DATA
    if _DATA is None:
        try:
            with open(_PATH, encoding="utf-8") as fh:
                _DATA = json.load(fh)
        except FileNotFoundError:
            _DATA = {"cells": [], "latest": [], "patches": [], "python": None, "torch": None}
    return _DATA


@dataclass(frozen=True)
class Cell:
    """One tested (python, torch, transformers, accelerate) combination.

    ``expect``: patch id -> variant the matrix expects (``"none"``: no variant). ``status``: the last
    recorded run's verdict: ``passed``, ``failed``, ``untested``, ``unsupported`` or ``not-run``.
    """

    id: str
    transformers: str
    accelerate: str
    python: str
    torch: str
    suite: str
    why: str
    expect: Mapping[str, str] = field(hash=False)
    status: str = "not-run"
    run: str | None = None
    notes: tuple[str, ...] = ()
    refuses: tuple[str, ...] = ()  # entries cpshim must refuse on this cell (e.g. ring CP below torch 2.6)
    trl: str | None = None  # the TRL the cell installs (None: none, which proves "TRL missing: nothing changes")

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def requirements(self) -> list[str]:
        """Pins for this cell (torch excluded: pick the wheel for your hardware)."""
        return [f"transformers=={self.transformers}", f"accelerate=={self.accelerate}",
                *([f"trl=={self.trl}"] if self.trl else [])]


def _cell(raw: Mapping[str, Any]) -> Cell:
    result = raw.get("result") or {}
    return Cell(
        id=raw["id"], transformers=raw["transformers"], accelerate=raw["accelerate"], python=raw["python"],
        torch=raw["torch"], suite=raw["suite"], why=raw.get("why", ""), expect=dict(raw["expect"]),
        status=result.get("status", "not-run"), run=result.get("run"), notes=tuple(result.get("notes", ())),
        refuses=tuple(raw.get("refuses", ())), trl=raw.get("trl"),
    )


def cells(*, passed_only: bool = False) -> tuple[Cell, ...]:
    """The matrix cells in matrix order; ``passed_only`` keeps those whose last run passed."""
    out = tuple(_cell(c) for c in load().get("cells", []))
    return tuple(c for c in out if c.passed) if passed_only else out


@dataclass(frozen=True)
class Support:
    """The answer for one (transformers, accelerate) pair.

    ``verdict``:
      - ``tested``: a matrix cell, and its last run passed;
      - ``tested-failing``: a matrix cell whose last run did not pass (see ``notes``);
      - ``same-code``: not a cell, but for every patch the upstream code of both releases has the
        fingerprint of a passing cell's releases (needs the shipped fingerprint data);
      - ``in-range``: cpshim selects a variant and calls it supported, but no cell covers the pair;
      - ``untested``: newer than (or a pre-release above) what cpshim was tested on;
      - ``unsupported``: cpshim cannot make this pair work (``reasons`` names the upgrade).
    ``variants``: patch id -> variant (the matrix's expectation for a cell, cpshim's selection otherwise).
    """

    transformers: str
    accelerate: str
    verdict: str
    support: str
    variants: Mapping[str, str | None]
    cell: Cell | None = None
    same_code_as: tuple[str, ...] = ()
    reasons: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())

    @property
    def tested(self) -> bool:
        return self.cell is not None

    @property
    def ok(self) -> bool:
        """True for ``tested`` and ``same-code``: backed by a passing test run."""
        return self.verdict in ("tested", "same-code")

    def __bool__(self) -> bool:
        return self.ok


def _group_of(patch_id: str, release: str) -> str | None:
    """The fingerprint (group) of `release` for `patch_id` in the shipped fingerprint data."""
    from . import fingerprint

    for fp, releases in fingerprint.load_data().get("patches", {}).get(patch_id, {}).get("fingerprints", {}).items():
        if release in releases:
            return str(fp)
    return None


def _same_code(versions: Mapping[str, str], selected: Mapping[str, str | None]) -> tuple[str, ...]:
    """Passing cells whose releases share every patch's fingerprint group with these versions."""
    from .patches.catalog import REGISTRY

    out = []
    for c in cells(passed_only=True):
        cell_versions = {"transformers": c.transformers, "accelerate": c.accelerate, "torch": c.torch}
        same = True
        for patch in REGISTRY:
            if not versions.get(patch.dist):
                continue
            if c.expect.get(patch.id, "none") != (selected.get(patch.id) or "none"):
                same = False
                break
            mine, theirs = _group_of(patch.id, versions[patch.dist]), _group_of(patch.id, cell_versions[patch.dist])
            if mine is None or mine != theirs:
                same = False
                break
        if same:
            out.append(c.id)
    return tuple(out)


def supported(transformers: str, accelerate: str, torch: str | None = None) -> Support:
    """Is this pair tested (a matrix cell), covered by the same upstream code, or neither?

    `torch`: the torch release (default: the matrix's default torch, on which most cells run). Never
    imports the libraries and never raises on odd version strings (an invalid one is ``unsupported``
    with a reason).
    """
    import cpshim

    torch = torch or str(load().get("torch") or "")
    rep = cpshim.report(versions={"transformers": transformers, "accelerate": accelerate, "torch": torch or None})
    needed = [p for p in rep.patches if p.state != "not-needed"]
    selected = {p.id: p.variant for p in rep.patches}
    support = rep.exit_code()
    support_word = {0: "supported", 1: "unsupported", 2: "untested"}[support]
    reasons = tuple(f"{p.id}: {p.reason}" for p in needed if p.support != "supported")
    cell = next((c for c in cells() if (c.transformers, c.accelerate, c.torch) == (transformers, accelerate,
                                                                                 torch.split("+")[0])), None)
    if cell is not None:
        variants: dict[str, str | None] = {k: (None if v == "none" else v) for k, v in cell.expect.items()}
        verdict = "tested" if cell.passed else "tested-failing"
        return Support(transformers, accelerate, verdict, support_word, variants, cell=cell,
                       reasons=reasons, notes=cell.notes)
    if support_word != "supported":
        return Support(transformers, accelerate, support_word, support_word, selected, reasons=reasons)
    same = _same_code({"transformers": transformers, "accelerate": accelerate, "torch": torch}, selected)
    verdict = "same-code" if same else "in-range"
    notes = () if same else (("no tested cell has the same upstream code for every patch; run "
                              "`nox -s latest` or your own tests before relying on it"),)
    return Support(transformers, accelerate, verdict, support_word, selected, same_code_as=same,
                   reasons=reasons, notes=notes)


_ARCHITECTURES = os.path.join(os.path.dirname(_PATH), "architectures.json")


@dataclass(frozen=True)
class Architecture:
    """A model type's row of the architecture table (compat_matrix/ARCHITECTURES.md, written from runs on
    `transformers`): `exact` (ring CP=2 matched one process), `refused` (ring mode refuses it: `reason`),
    `not built` (no tiny model: `reason`), or `unknown` (not in the table)."""

    model_type: str
    verdict: str
    transformers: str | None
    reason: str = ""
    features: tuple[str, ...] = ()
    figures: Mapping[str, Any] = field(default_factory=dict)

    @property
    def exact(self) -> bool:
        return self.verdict == "exact"


def architecture(model_type: str) -> Architecture:
    """What the architecture table says of `model_type` (a transformers `model_type`, e.g. "gemma3_text")."""
    try:
        with open(_ARCHITECTURES, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        data = {}
    version = data.get("transformers")
    row = data.get("types", {}).get(model_type)
    if row is None:
        return Architecture(model_type, "unknown", version, reason=(
            f"{model_type!r} is not in the architecture table (transformers {version}): ring mode decides from "
            f"the model's config when it runs (`cpshim check --model {model_type}`), and refuses layer types it "
            "does not know"))
    return Architecture(model_type, row["verdict"], version, row.get("reason", ""), tuple(row.get("features", ())),
                        row.get("figures", {}))
