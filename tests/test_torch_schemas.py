"""Operator schemas as fingerprint data, and the torch_cuda provider's calls bound from every recorded one.

No torch needed: the schemas are the shipped data (read from every torch wheel 2.2.0-2.15.0 by
compat_matrix/generate.py); the binding is checked against a Python signature built from each schema.
Against the real op parser and meta kernels of the installed torch: tests/ring/test_aten_calls.py.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cpshim.fingerprint import schemas
from cpshim.ring import aten_calls as A
from cpshim.ring.errors import ProviderError

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = json.loads((ROOT / "cpshim" / "_data" / "fingerprints.json").read_text(encoding="utf-8"))
RECORDED = SHIPPED["patches"]["aten-flash-attention"]["schemas"]
FORWARD, BACKWARD = "aten::_flash_attention_forward", "aten::_flash_attention_backward"




def _signature(schema: schemas.Schema) -> inspect.Signature:
    params = []
    for a in schema.args:
        kind = inspect.Parameter.KEYWORD_ONLY if a.kwarg_only else inspect.Parameter.POSITIONAL_OR_KEYWORD
        default = inspect.Parameter.empty if a.default is None else a.default
        params.append(inspect.Parameter(a.name, kind, default=default))
    return inspect.Signature(params)


class T:
    """A stand-in tensor (the binding never looks inside one)."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"T({self.name})"


def _check_binds(schema: schemas.Schema, values: dict) -> None:
    args, kwargs = A.bind(schema, values)
    bound = _signature(schema).bind(*args, **kwargs)  # TypeError: names, kinds or arity do not fit
    kw_only = {a.name for a in schema.args if a.kwarg_only}
    assert kw_only >= {k for k in kwargs if k in kw_only} and len(args) <= len(schema.args) - len(kw_only)
    for a in schema.args:  # every value reaches the parameter of its name; a non-optional Tensor gets a tensor
        if a.name in values:
            assert bound.arguments[a.name] is values[a.name], (schema.name, a.name)
        if a.type == "Tensor":  # required: a tensor, or None (torch passes an undefined tensor: dense calls)
            assert a.name in bound.arguments and isinstance(bound.arguments[a.name], (T, type(None))), a.name


def test_every_tested_torch_release_has_recorded_schemas():
    releases = {r for by_hash in SHIPPED["patches"]["aten-flash-attention"]["components"].values()
                for rs in by_hash.values() for r in rs}
    assert {"2.2.0", "2.6.0", "2.7.0", "2.13.0", "2.15.0"} <= releases
    assert set(RECORDED) == {FORWARD, BACKWARD} and all(len(v) >= 3 for v in RECORDED.values())
    for texts in RECORDED.values():
        for digest, text in texts.items():
            assert schemas.schema_hash(schemas.parse(text)) == digest  # the text is what was hashed
            assert schemas.parse(text).canonical() == text


@pytest.mark.parametrize("digest", sorted(RECORDED[FORWARD]))
@given(varlen=st.booleans(), causal=st.booleans(), scale=st.one_of(st.none(), st.floats(0.01, 2.0)))
def test_forward_call_binds_to_every_recorded_schema(digest, varlen, causal, scale):
    schema = schemas.parse(RECORDED[FORWARD][digest])
    cum = (T("cu_q"), T("cu_k")) if varlen else (None, None)
    _check_binds(schema, A.forward_values(T("q"), T("k"), T("v"), *cum, 16, 16, causal, scale))
    assert {"output", "softmax_logsumexp"} <= set(schema.return_names) and len(schema.returns) == 5


@pytest.mark.parametrize("digest", sorted(RECORDED[BACKWARD]))
@given(varlen=st.booleans(), causal=st.booleans())
def test_backward_call_binds_to_every_recorded_schema(digest, varlen, causal):
    schema = schemas.parse(RECORDED[BACKWARD][digest])
    cum = (T("cu_q"), T("cu_k")) if varlen else (None, None)
    values = A.backward_values(schema, T("dout"), T("q"), T("k"), T("v"), T("out"), T("lse"), *cum, 16, 16,
                               causal, 0.5, (T("rng0"), T("rng1")))
    _check_binds(schema, values)
    first, second = A.rng_names(schema)
    assert values[first].name == "rng0" and values[second].name == "rng1"


def test_binding_refuses_a_feature_the_release_lacks_and_a_missing_argument():
    old = schemas.parse(RECORDED[FORWARD][min(RECORDED[FORWARD], key=lambda d: len(RECORDED[FORWARD][d]))])
    assert old.arg("window_size_left") is None  # torch 2.2-2.3
    values = A.forward_values(T("q"), T("k"), T("v"), None, None, 16, 16, True, None)
    A.bind(old, {**values, "window_size_left": None})  # "off" binds on every release
    with pytest.raises(ProviderError, match="takes no window_size_left"):
        A.bind(old, {**values, "window_size_left": 128})
    with pytest.raises(ProviderError, match="no value for its parameter 'is_causal'"):
        A.bind(old, {k: v for k, v in values.items() if k != "is_causal"})


def test_parse_reads_torch_printing_and_native_functions_alike():
    yaml_line = ("_flash_attention_backward(Tensor grad_out, Tensor query, SymInt max_q, float dropout_p, "
                 "*, float? scale=None, SymInt? window_size_left=None) -> (Tensor, Tensor, Tensor)")
    printed = "aten::" + yaml_line.replace(", *,", ",  *,")
    assert schemas.parse(yaml_line) == schemas.parse(printed)
    s = schemas.parse(yaml_line)
    assert [a.kwarg_only for a in s.args] == [False] * 4 + [True] * 2 and s.arg("scale").optional
    assert s.return_names == (None, None, None)
    nested = schemas.parse('f(int[2] stride=[1, 1], str reduce="mean", Tensor(a!) out) -> Tensor(a!)')
    assert [a.default for a in nested.args] == ["[1, 1]", '"mean"', None] and nested.args[2].type == "Tensor(a!)"
    with pytest.raises(ValueError):
        schemas.parse("not a schema")
