"""pytest plugin (entry point ``pytest11: cpshim``), active in every project that has cpshim installed.

- Adds ONE line to the pytest header: the installed versions and the variant cpshim selects per
  patch, e.g. ``cpshim 0.1.0: transformers 5.24.0, accelerate 1.15.0, torch 2.13.0+cpu |
  trainer-cp-inputs=no-op, accelerate-prepare-cp=no-op-context``. It costs one ``import cpshim``
  (selection only: no torch, transformers or accelerate is imported) and never fails a run.
  ``-p no:cpshim`` turns the plugin off.
- ``--cpshim-result=PATH`` (or env ``CPSHIM_RESULT``): at the end of the session, write one JSON
  result for a compat-matrix cell: versions, per-patch variant and support, the live fingerprints of
  the patched upstream code (this imports the patched modules, once, after the tests), and the tests
  passed, failed and skipped. ``--cpshim-cell=ID`` / ``--cpshim-suite=NAME`` label it
  (env ``CPSHIM_CELL`` / ``CPSHIM_SUITE``); ``CPSHIM_RUN_ID`` / ``CPSHIM_RUN_COMMIT`` name the run.
  ``CPSHIM_RESULT_FINGERPRINTS=0`` skips the fingerprints (and their imports). ``noxfile.py`` uses this
  for every cell; ``compat_matrix/render.py`` merges the files into COMPAT.md.
"""

from __future__ import annotations

import json
import os
import platform
import time
from typing import Any

RESULT_SCHEMA = 1
_DISTS = ("transformers", "accelerate", "torch", "trl")
_EXTRA_DISTS = ("torch", "ring-flash-attn", "huggingface-hub", "hypothesis", "pytest")


def header_line() -> str:
    """The one header line (also used by tests); never raises."""
    try:
        import cpshim

        rep = cpshim.report()
        versions = ", ".join(f"{d} {rep.versions.get(d) or '-'}" for d in _DISTS)
        parts = []
        for p in rep.patches:
            if p.state == "not-needed":
                continue
            text = f"{p.id}={p.variant or 'none'}"
            if p.support != "supported":
                text += f" ({p.support})"
            parts.append(text)
        selected = ", ".join(parts) if parts else "no patch needed (transformers/accelerate not installed)"
        return f"cpshim {cpshim.__version__}: {versions} | {selected}"
    except Exception as exc:  # noqa: BLE001 - a header must never break someone's test run
        return f"cpshim: report unavailable ({type(exc).__name__}: {exc})"


def pytest_addoption(parser: Any) -> None:
    group = parser.getgroup("cpshim", "cpshim compat-matrix results")
    group.addoption("--cpshim-result", dest="cpshim_result", default=os.environ.get("CPSHIM_RESULT") or None,
                    metavar="PATH", help="write this session's compat-matrix cell result (JSON) to PATH")
    group.addoption("--cpshim-cell", dest="cpshim_cell", default=os.environ.get("CPSHIM_CELL") or None,
                    metavar="ID", help="cell id recorded in the result, e.g. t4.56.2-a1.10.1")
    group.addoption("--cpshim-suite", dest="cpshim_suite", default=os.environ.get("CPSHIM_SUITE") or None,
                    metavar="NAME", help="suite name recorded in the result (full, smoke, ...)")


def pytest_report_header(config: Any) -> str:
    return header_line()


def pytest_configure(config: Any) -> None:
    path = config.getoption("cpshim_result", None)
    if path:
        config.pluginmanager.register(_ResultWriter(config, path), "cpshim-result-writer")


def _short(text: str, limit: int = 600) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _ResultWriter:
    def __init__(self, config: Any, path: str) -> None:
        self.config = config
        self.path = path
        self.started = time.time()
        self.outcomes: dict[str, dict[str, Any]] = {}

    def pytest_runtest_logreport(self, report: Any) -> None:
        nodeid = report.nodeid
        entry = self.outcomes.setdefault(nodeid, {"outcome": "passed"})
        if report.failed:
            entry["outcome"] = "failed" if report.when == "call" else "error"
            crash = getattr(report.longrepr, "reprcrash", None)
            entry["message"] = _short(crash.message if crash is not None else str(report.longrepr))
            entry["when"] = report.when
        elif report.skipped and entry["outcome"] == "passed":
            entry["outcome"] = "xfailed" if hasattr(report, "wasxfail") else "skipped"
            longrepr = report.longrepr
            if isinstance(longrepr, tuple) and len(longrepr) == 3:
                entry["message"] = _short(str(longrepr[2]))

    def pytest_collectreport(self, report: Any) -> None:
        if report.failed:
            self.outcomes[report.nodeid or "<collection>"] = {
                "outcome": "error", "when": "collect", "message": _short(str(report.longrepr), 1200)}

    def pytest_sessionfinish(self, session: Any, exitstatus: Any) -> None:
        try:
            data = self._result(int(exitstatus))
        except Exception as exc:  # noqa: BLE001 - still write what we know: the run must leave a trace
            data = {"schema": RESULT_SCHEMA, "error": f"{type(exc).__name__}: {exc}", "exit": int(exitstatus)}
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1, sort_keys=True)
            fh.write("\n")
        os.replace(tmp, self.path)

    def _result(self, exitstatus: int) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for entry in self.outcomes.values():
            counts[entry["outcome"]] = counts.get(entry["outcome"], 0) + 1
        return {
            "schema": RESULT_SCHEMA,
            "kind": os.environ.get("CPSHIM_KIND") or None,
            "cell": self.config.getoption("cpshim_cell", None),
            "suite": self.config.getoption("cpshim_suite", None),
            "run": {"id": os.environ.get("CPSHIM_RUN_ID"), "commit": os.environ.get("CPSHIM_RUN_COMMIT")},
            "platform": {"python": platform.python_version(), "machine": platform.machine(),
                         "system": platform.system()},
            **cell_state(),
            "pytest": {
                "exit": exitstatus,
                "args": list(self.config.invocation_params.args),
                "duration_s": round(time.time() - self.started, 1),
                "counts": counts,
                "passed": sorted(k for k, v in self.outcomes.items() if v["outcome"] == "passed"),
                "failed": [{"id": k, **{f: v[f] for f in ("outcome", "when", "message") if f in v}}
                           for k, v in sorted(self.outcomes.items()) if v["outcome"] in ("failed", "error")],
                "skipped": [{"id": k, "reason": v.get("message", "")}
                            for k, v in sorted(self.outcomes.items()) if v["outcome"] in ("skipped", "xfailed")],
            },
        }


def cell_state() -> dict[str, Any]:
    """Versions, selection and live fingerprints in this environment (fresh: not the process state,
    which the tests may have changed). Imports the patched modules of installed distributions."""
    from . import fingerprint
    from .patches.catalog import REGISTRY
    from .registry import select
    from .versions import installed

    versions = installed(REGISTRY.dists() + _EXTRA_DISTS)
    patches: dict[str, Any] = {}
    for patch in REGISTRY:
        sel = select(patch, versions)
        rec: dict[str, Any] = {
            "variant": sel.variant.name if sel.variant else None, "support": sel.support,
            "reason": sel.reason, "needed": sel.needed, "fingerprint": None,
        }
        if sel.needed and os.environ.get("CPSHIM_RESULT_FINGERPRINTS", "1") != "0":
            try:
                chk = fingerprint.check(patch)
                rec["fingerprint"] = {"value": chk.fingerprint, "matches": list(chk.releases),
                                      "unmatched": list(chk.unmatched), "stale": chk.stale,
                                      "reason": chk.reason, "components": dict(chk.components)}
            except Exception as exc:  # noqa: BLE001 - recorded; the cell then fails in render.judge
                rec["fingerprint"] = {"error": f"{type(exc).__name__}: {exc}"}
        patches[patch.id] = rec
    from . import __version__

    return {
        "versions": {"cpshim": __version__, **{d: v.raw for d, v in versions.items()}},
        "patches": patches,
        "fingerprint_data": bool(fingerprint.load_data()),
    }
