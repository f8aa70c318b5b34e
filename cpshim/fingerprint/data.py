"""The shipped fingerprints (``cpshim/_data/fingerprints.json``) and lookups in them."""

from __future__ import annotations

from .components import NORMALISER

_DATA: dict | None = None


def load_data() -> dict:
    """The shipped ``cpshim/_data/fingerprints.json`` (read once, cached). ``{}`` if it is missing."""
    global _DATA
    if _DATA is None:
        import json
        import os

        package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        path = os.path.join(package, "_data", "fingerprints.json")
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except FileNotFoundError:
            data = {}
        if data.get("normaliser") != NORMALISER:
            data = {}
        _DATA = data
    return _DATA


def _entry(patch_id: str) -> dict:
    return load_data().get("patches", {}).get(patch_id, {})


def lookup(patch_id: str, fingerprint: str) -> tuple[str, ...]:
    """Tested releases (of the patch's dist) whose fingerprint for `patch_id` equals `fingerprint`.

    Empty: it differs from every tested release (or the patch is not in the shipped data).
    """
    return tuple(_entry(patch_id).get("fingerprints", {}).get(fingerprint, ()))


def lookup_component(patch_id: str, component: str, component_hash: str) -> tuple[str, ...]:
    """Tested releases in which `component` (a watch entry of `patch_id`) hashes to `component_hash`."""
    return tuple(_entry(patch_id).get("components", {}).get(component, {}).get(component_hash, ()))
