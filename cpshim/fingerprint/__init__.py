"""Fingerprints of the upstream code a patch depends on, comparable between wheels and a live process.

A *component* names upstream code (the `watch` entries of a `Patch` in `cpshim.patches.catalog`):

- ``"module:qualname"``: a function, method or class, e.g.
  ``"transformers.trainer:Trainer._prepare_context_parallel_inputs"`` or
  ``"transformers.trainer_pt_utils:is_attention_mask_causal"``;
- ``"module:qualname@name"``: only the statements of that function that mention ``name`` (call sites),
  e.g. ``"transformers.trainer:Trainer.training_step@_prepare_context_parallel_inputs"``.

Each component hashes to a 16-hex-digit string, or to one of the fixed markers:

- ``ABSENT`` (``"absent"``): the module, class or attribute does not exist;
- ``OPAQUE`` (``"opaque"``): the name exists but is not a ``def``/``class`` written in that module
  (an assignment, an import from elsewhere, a builtin, a wrapper without ``__wrapped__``);
- ``UNMENTIONED`` (``"unmentioned"``): the function exists but no statement of it mentions ``name``;
- ``UNAVAILABLE`` (``"unavailable"``, live path only): the code exists but its source cannot be read.

Two paths compute the same hash for the same release (the tests check it on installed releases):

- :func:`component_hash_from_source` reads a module's source text (used on files inside wheels by
  ``compat_matrix/generate.py``; nothing is imported; see :mod:`.source`);
- :func:`component_hash_live` reads already-imported code (see :mod:`.live`).

Modules, one concern each: :mod:`.components` (names, markers), :mod:`.canonical` (the normalised text
that is hashed), :mod:`.mentions` (``@name`` selection), :mod:`.source` (the wheel path), :mod:`.live`
(the live path), :mod:`.schemas` (torch operator schemas), :mod:`.data` (the shipped data and
lookups), :mod:`.check` (a patch against the data).
Importing this package imports none of the upstream libraries, nor ``json`` (read on first lookup).
"""

from __future__ import annotations

from .check import FingerprintCheck, check, combine, patch_component_hashes, patch_fingerprint
from .components import ABSENT, MARKERS, NORMALISER, OPAQUE, SIGNATURE, UNAVAILABLE, UNMENTIONED, parse_component
from .data import load_data, lookup, lookup_component
from .live import clear_cache, component_hash_live
from .source import ParsedSource, component_hash_from_source, normalise, parse_source, source_hash

__all__ = [
    "NORMALISER", "ABSENT", "OPAQUE", "UNMENTIONED", "UNAVAILABLE", "MARKERS", "SIGNATURE",
    "parse_component", "normalise", "source_hash", "parse_source", "ParsedSource",
    "component_hash_from_source", "component_hash_live",
    "combine", "patch_component_hashes", "patch_fingerprint", "load_data", "lookup", "lookup_component",
    "check", "FingerprintCheck", "clear_cache",
]

