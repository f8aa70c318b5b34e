"""The gated wrapper (`patching.Gate`): upstream itself while closed, the dispatch while open."""

from __future__ import annotations

from cpshim import patching


class Interface:
    def __getitem__(self, key):
        return f"upstream {key}"

    def many(self, *keys):
        return keys


def _install(gate):
    calls = []

    def dispatch(patch_id, original, this, args, kwargs):
        calls.append((patch_id, args, kwargs))
        return "patched " + original(*args, **kwargs)

    inst = patching.install("p", __name__, ("Interface", "__getitem__"), dispatch, gate=gate)
    return inst, calls


def test_closed_gate_calls_upstream_and_open_gate_dispatches():
    gate = patching.Gate()
    inst, calls = _install(gate)
    try:
        assert Interface()["a"] == "upstream a" and calls == []
        gate.enter()
        gate.enter()
        gate.leave()
        assert Interface()["b"] == "patched upstream b" and calls == [("p", ("b",), {})]
        gate.leave()
        gate.leave()  # more leaves than enters never reopens it
        assert not gate.open and Interface()["c"] == "upstream c"
        gate.hold()
        gate.leave()
        assert gate.open
        gate.release()
        assert not gate.open
    finally:
        assert patching.uninstall(inst)
    assert vars(Interface)["__getitem__"] is inst.raw


def test_a_gate_on_any_method_passes_its_arguments_through():
    gate, calls = patching.Gate(), []

    def dispatch(patch_id, original, this, args, kwargs):
        calls.append((args, kwargs))
        return ("patched", original(*args, **kwargs))

    inst = patching.install("p", __name__, ("Interface", "many"), dispatch, gate=gate)
    try:
        assert Interface().many("a", "b") == ("a", "b") and calls == []
        gate.enter()
        assert Interface().many("c") == ("patched", ("c",)) and calls == [(("c",), {})]
        gate.leave()
    finally:
        assert patching.uninstall(inst)
    assert vars(Interface)["many"] is inst.raw

