"""The one contract every registered patch meets, each scenario in a fresh interpreter.

Covers every order of import / apply / revert, idempotence, identity on revert, no double
wrapping, and 8 threads applying and reverting at once.
"""

from __future__ import annotations

import pytest

from tests.helpers import run_python

PRELUDE = """
import importlib, random, sys, threading, warnings
import cpshim
from cpshim import patching
from cpshim.patches.catalog import REGISTRY

warnings.simplefilter("ignore", cpshim.CpshimWarning)
needed = [p for p in REGISTRY if p.kind == "patch" and cpshim.report()[p.id].state != "not-needed"]
print("patches:", [p.id for p in needed])
assert needed, "no patch target installed: nothing to check"

def current(p):
    return patching.resolve(p.module, p.attr_path)[2]

def inner(obj):
    return obj.fget if isinstance(obj, property) else obj

def assert_wrapped_once(p, original):
    cur = current(p)
    assert patching.is_wrapper(cur, p.id), (p.id, cur)
    assert inner(cur).__wrapped__ is inner(original), p.id
    assert not patching.is_wrapper(inner(cur).__wrapped__), f"{p.id} double wrapped"

def states():
    return {r.id: r.state for r in cpshim.report().patches if r.id in {p.id for p in needed}}

def uses_states():
    return {r.id: r.state for r in cpshim.report().patches if r.kind == "uses" and r.state != "not-needed"}
"""

IMPORT_THEN_APPLY = PRELUDE + """
for p in needed:
    importlib.import_module(p.module)
originals = {p.id: current(p) for p in needed}
cpshim.apply()
assert set(states().values()) == {"applied"}, states()
assert set(uses_states().values()) == {"in-use"}, uses_states()   # torch is imported: fingerprinted, not patched
wrappers = {p.id: current(p) for p in needed}
for p in needed:
    assert_wrapped_once(p, originals[p.id])
for p in needed:                                         # a gate opens only for work (a sharded step)
    if p.gate:
        module, _, attr = p.gate.partition(":")
        assert not getattr(importlib.import_module(module), attr).open, p.id
cpshim.apply()                                           # apply twice: same wrapper, still once
for p in needed:
    assert current(p) is wrappers[p.id]
    assert_wrapped_once(p, originals[p.id])
cpshim.revert()
for p in needed:
    assert current(p) is originals[p.id], f"{p.id}: revert did not restore identity"
cpshim.revert()                                          # revert twice: harmless
assert set(states().values()) == {"reverted"}, states()
assert set(uses_states().values()) == {"reverted"}, uses_states()
for p in needed:
    assert current(p) is originals[p.id]
cpshim.apply()                                           # apply-revert-apply
for p in needed:
    assert current(p) is wrappers[p.id]
    assert_wrapped_once(p, originals[p.id])
cpshim.revert()

errors = []
barrier = threading.Barrier(8)
def worker(seed):
    rng = random.Random(seed)
    try:
        barrier.wait()
        for _ in range(25):
            (cpshim.apply if rng.random() < 0.5 else cpshim.revert)()
    except BaseException as e:
        errors.append(e)
threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
[t.start() for t in threads]
[t.join() for t in threads]
assert not errors, errors
for p in needed:
    cur = current(p)
    assert cur is originals[p.id] or (patching.is_wrapper(cur, p.id) and inner(cur).__wrapped__ is inner(originals[p.id]))
    if cur is not originals[p.id]:
        assert_wrapped_once(p, originals[p.id])
cpshim.revert()
for p in needed:
    assert current(p) is originals[p.id]
print("CONTRACT OK")
"""

APPLY_THEN_IMPORT = PRELUDE + """
for p in needed:
    assert p.module not in sys.modules, f"{p.module} imported before the test"
cpshim.apply()
assert set(states().values()) == {"pending-import"}, states()
for p in needed:
    importlib.import_module(p.module)
assert set(states().values()) == {"applied"}, states()
for p in needed:
    assert_wrapped_once(p, inner(current(p)).__wrapped__)
    original = inner(current(p)).__wrapped__
cpshim.apply()
originals = {p.id: inner(current(p)).__wrapped__ for p in needed}
for p in needed:
    assert_wrapped_once(p, originals[p.id])
cpshim.revert()
for p in needed:
    assert inner(current(p)) is originals[p.id], f"{p.id}: revert did not restore identity"
assert set(states().values()) == {"reverted"}, states()
print("CONTRACT OK")
"""

APPLY_REVERT_BEFORE_IMPORT = PRELUDE + """
cpshim.apply()
cpshim.revert()                      # revert while pending: the import hook must be gone
for p in needed:
    importlib.import_module(p.module)
    assert not patching.is_wrapper(current(p)), f"{p.id} patched after revert"
assert not [f for f in sys.meta_path if type(f).__module__ == "cpshim.import_hooks"]
print("CONTRACT OK")
"""


@pytest.mark.upstream
@pytest.mark.parametrize("script", [IMPORT_THEN_APPLY, APPLY_THEN_IMPORT, APPLY_REVERT_BEFORE_IMPORT],
                         ids=["import-then-apply", "apply-then-import", "apply-revert-then-import"])
def test_patch_contract(script, upstream_installed):
    proc = run_python(script)
    assert "CONTRACT OK" in proc.stdout
