"""Calls to aten's flash-attention ops, bound by argument name from the schema this torch registers.

A local kernel call, no exchange. Why by name: torch changes these private ops between releases
(2.4 added ``window_size_left/right``; 2.7 renamed the backward's ``philox_seed, philox_offset`` to
``rng_state, unused`` and the forward's outputs with them; 2.12 added ``block_table, num_splits``), and
a positional call written for one release would pass a value to the wrong parameter of another. The
schemas of every tested release are fingerprint data (registry entry ``aten-flash-attention``); one
that matches none is reported ``untested``, and a call that cannot be bound is refused by name.
"""

from __future__ import annotations

from ..fingerprint import schemas
from .errors import ProviderError

FORWARD = "aten::_flash_attention_forward"
BACKWARD = "aten::_flash_attention_backward"
#: Backward parameters that carry the forward's dropout RNG state (unused at dropout 0).
RNG_PAIRS = (("rng_state", "unused"), ("philox_seed", "philox_offset"))

_LIVE: dict = {}


def live(component: str) -> schemas.Schema:
    """This process's schema of `component` (read once)."""
    schema = _LIVE.get(component)
    if schema is None:
        schema = schemas.live_schema(component)
        if schema is None:
            raise ProviderError(f"this torch registers no {component} op: the torch_cuda provider needs "
                                f"torch>=2.2 built with flash attention")
        _LIVE[component] = schema
    return schema


def bind(schema: schemas.Schema, values: dict) -> tuple[list, dict]:
    """(positional, keyword) arguments for `schema` from `values` (name -> value).

    Parameters before ``*`` go by position until the first one left to its default, every later one
    by keyword. Refused: a parameter without a default and without a value, and a non-None value for a
    parameter this release does not have (a feature its op lacks; None means "off")."""
    names = {a.name for a in schema.args}
    extra = sorted(k for k, v in values.items() if k not in names and v is not None)
    if extra:
        raise ProviderError(f"torch's {schema.name} takes no {', '.join(extra)} (its schema: {schema.canonical()}); "
                            f"use a torch whose op has them, or the reference provider")
    args: list = []
    kwargs: dict = {}
    for a in schema.args:
        if a.name not in values:
            if a.default is None:
                raise ProviderError(f"cannot call torch's {schema.name}: no value for its parameter {a.name!r} "
                                    f"(schema: {schema.canonical()}); this torch is untested with cpshim: "
                                    f"use the reference provider or a torch release `cpshim report` lists")
            continue
        if a.kwarg_only or kwargs:
            kwargs[a.name] = values[a.name]
        elif len(args) == schema.args.index(a):
            args.append(values[a.name])
        else:
            kwargs[a.name] = values[a.name]
    return args, kwargs


def rng_names(schema: schemas.Schema) -> tuple[str, str]:
    """The backward's two RNG parameters in this release's spelling."""
    names = {a.name for a in schema.args}
    for pair in RNG_PAIRS:
        if set(pair) <= names:
            return pair
    raise ProviderError(f"torch's {schema.name} has neither rng_state/unused nor philox_seed/philox_offset "
                        f"(schema: {schema.canonical()}): this torch is untested with cpshim")


def _window(left: int) -> dict:
    """A causal window to the left (None: unlimited, the ops' default; releases before 2.4 lack the
    parameters, so `bind` refuses a window there)."""
    return {"window_size_left": left if left >= 0 else None}


def forward_values(q, k, v, cum_q, cum_k, max_q, max_k, causal, scale, left: int = -1) -> dict:
    return {"query": q, "key": k, "value": v, "cum_seq_q": cum_q, "cum_seq_k": cum_k, "max_q": max_q,
            "max_k": max_k, "dropout_p": 0.0, "is_causal": causal, "return_debug_mask": False, "scale": scale,
            **_window(left)}


def backward_values(schema: schemas.Schema, dout, q, k, v, out, lse, cum_q, cum_k, max_q, max_k, causal, scale,
                    rng: tuple, left: int = -1) -> dict:
    """`rng`: the two RNG tensors (ignored at dropout 0), named as `schema` spells them."""
    return {"grad_out": dout, "query": q, "key": k, "value": v, "out": out, "logsumexp": lse,
            "cum_seq_q": cum_q, "cum_seq_k": cum_k, "max_q": max_q, "max_k": max_k, "dropout_p": 0.0,
            "is_causal": causal, "scale": scale, **dict(zip(rng_names(schema), rng)), **_window(left)}


def call(op, schema: schemas.Schema, values: dict):
    args, kwargs = bind(schema, values)
    return op(*args, **kwargs)


def named_outputs(schema: schemas.Schema, result) -> dict:
    """The forward's outputs by name (``output``, ``softmax_logsumexp``, then the RNG pair)."""
    names = schema.return_names
    if len(names) != len(result) or None in names:
        raise ProviderError(f"torch's {schema.name} returned {len(result)} values; its schema names "
                            f"{names}: this torch is untested with cpshim")
    return dict(zip(names, result))
