"""`import cpshim` stays cheap: selection runs, but no heavy library is imported."""

from __future__ import annotations

import json

from tests.helpers import run_python

HEAVY = ("torch", "transformers", "accelerate", "ring_flash_attn", "importlib.metadata")


def test_import_selects_without_importing_upstream():
    proc = run_python(f"""
        import sys, json, cpshim
        rep = cpshim.report()
        cpshim.apply()                    # nothing imported yet: every patch waits for its module
        after = cpshim.report()
        print(json.dumps({{"heavy": [m for m in {HEAVY!r} if m in sys.modules],
                          "states": [p.state for p in after.needed()],
                          "selected": [p.state for p in rep.patches]}}))
    """)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["heavy"] == []
    assert set(out["selected"]) <= {"selected", "not-needed"}
    assert set(out["states"]) <= {"pending-import"}
