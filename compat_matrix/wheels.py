"""Release lists from PyPI and a wheel cache, for `compat_matrix/generate.py` (stdlib + packaging).

Release lists come from PyPI's PEP 691 JSON simple API (`https://pypi.org/simple/<name>/` with
`Accept: application/vnd.pypi.simple.v1+json`), which carries `yanked` and `upload-time` per file.
Fallbacks, in order: PyPI's JSON API (`/pypi/<name>/json`, also has `yanked` per file), then
`pip index versions` (no yanked information: `yanked` is written as null). The local pip mirror
configured on the development machines (`file:///opt/pypi/simple`, `/opt/wheels`) holds a handful
of wheels and no yanked information, so it is never used for release lists.

Wheels are fetched with `pip download --no-deps --only-binary=:all: NAME==X` (an `==` pin also
selects yanked releases, PEP 592), never resolving dependencies (no torch). They are cached outside
the repository and checked against the sha256 the index publishes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import urllib.request
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version

SIMPLE_URL = "https://pypi.org/simple/{name}/"
JSON_URL = "https://pypi.org/pypi/{name}/json"
PEP691 = "application/vnd.pypi.simple.v1+json"
DEFAULT_CACHE = "/work/wheels-cache"


@dataclass(frozen=True)
class Release:
    dist: str
    version: str
    yanked: bool | None  # None: the source had no yanked information
    yanked_reason: str | None
    upload_time: str | None
    wheel: str | None  # file name of the py3 wheel, if the index lists one
    sha256: str | None

    def as_json(self) -> dict:
        return {
            "version": self.version, "yanked": self.yanked, "yanked_reason": self.yanked_reason,
            "upload_time": self.upload_time, "wheel": self.wheel, "sha256": self.sha256,
        }


def _get(url: str, accept: str | None = None, timeout: float = 60) -> bytes:
    req = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.read()


#: Distributions without a py3 wheel: the build whose files are read (their Python sources and data
#: are the same in every build of a release; only the native libraries differ).
PLATFORM_WHEELS = {"torch": ("cp311", "manylinux", "x86_64")}
#: What a torch wheel is cut down to in the cache (a torch wheel is about 800 MB): the operator
#: schemas and the modules the catalog watches. A cut-down wheel lists its members in MANIFEST, and a
#: module outside it is an error (re-download), never `absent`.
SLIM_MEMBERS = {"torch": ("torchgen/packaged/ATen/native/native_functions.yaml",
                          "torch/distributed/distributed_c10d.py", "torch/distributed/device_mesh.py")}
MANIFEST = "CPSHIM-SLIM-MANIFEST"


def _wanted(dist: str, tags) -> bool:
    if dist not in PLATFORM_WHEELS:
        return any(t.interpreter.startswith("py3") for t in tags)
    interp, plat, arch = PLATFORM_WHEELS[dist]
    return any(t.interpreter == interp and plat in t.platform and arch in t.platform for t in tags)


def _files_to_releases(dist: str, files: list[dict], lo: Version, hi: Version) -> tuple[list[Release], str]:
    """`files`: dicts with filename, yanked (bool or reason string), upload-time, hashes.sha256."""
    by_version: dict[str, list[dict]] = {}
    for f in files:
        name = f["filename"]
        if not name.endswith(".whl"):
            continue
        try:
            _, ver, _, tags = parse_wheel_filename(name)
        except Exception:
            continue
        if not _wanted(dist, tags):
            continue
        by_version.setdefault(str(ver), []).append(f)
    out = []
    for ver, fs in by_version.items():
        v = Version(ver)
        if not (lo <= v <= hi):
            continue
        f = sorted(fs, key=lambda f: f["filename"])[0]
        y = f.get("yanked", False)
        out.append(Release(
            dist=dist, version=ver, yanked=bool(y),
            yanked_reason=y if isinstance(y, str) and y else None,
            upload_time=f.get("upload-time"), wheel=f["filename"], sha256=(f.get("hashes") or {}).get("sha256"),
        ))
    out.sort(key=lambda r: Version(r.version))
    return out, "pep691"


def fetch_releases(dist: str, lo: str, hi: str) -> tuple[list[Release], str]:
    """Every release of `dist` with lo <= version <= hi (pre-releases included), oldest first.

    Returns (releases, source) where source names where the list came from.
    """
    vlo, vhi = Version(lo), Version(hi)
    name = canonicalize_name(dist)
    try:
        data = json.loads(_get(SIMPLE_URL.format(name=name), PEP691))
        return _files_to_releases(dist, data["files"], vlo, vhi)[0], "pypi-simple-json (PEP 691)"
    except Exception as exc:  # noqa: BLE001 - fall back, say so
        print(f"  {dist}: PEP 691 simple API failed ({exc}); trying /pypi/{name}/json", file=sys.stderr)
    try:
        data = json.loads(_get(JSON_URL.format(name=name)))
        files = []
        for ver, fs in data["releases"].items():
            for f in fs:
                files.append({
                    "filename": f["filename"], "yanked": (f.get("yanked_reason") or True) if f.get("yanked") else False,
                    "upload-time": f.get("upload_time_iso_8601"), "hashes": f.get("digests") or {},
                })
        return _files_to_releases(dist, files, vlo, vhi)[0], "pypi-json"
    except Exception as exc:  # noqa: BLE001
        print(f"  {dist}: PyPI JSON API failed ({exc}); trying `pip index versions` (no yanked info)",
              file=sys.stderr)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "index", "versions", "--pre", dist],
        capture_output=True, text=True, check=True,
    )
    m = re.search(r"Available versions:\s*(.*)", proc.stdout)
    if not m:
        raise RuntimeError(f"cannot list releases of {dist}: {proc.stdout}{proc.stderr}")
    out = []
    for ver in m.group(1).split(","):
        try:
            v = Version(ver.strip())
        except InvalidVersion:
            continue
        if vlo <= v <= vhi:
            out.append(Release(dist, str(v), None, None, None, None, None))
    out.sort(key=lambda r: Version(r.version))
    return out, "pip index versions"


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _slim_path(rel: Release, cache: str) -> str:
    return os.path.join(cache, "slim", f"{rel.wheel}.slim.zip")


def slim(wheel_path: str, out_path: str, members: tuple, sha256: str | None) -> str:
    """Cut a wheel down to `members` (plus a manifest naming them and the wheel's sha256)."""
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    tmp = out_path + ".tmp"
    with zipfile.ZipFile(wheel_path) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        names = set(src.namelist())
        for m in members:
            if m in names:
                dst.writestr(m, src.read(m))
        dst.writestr(MANIFEST, json.dumps({"members": list(members), "sha256": sha256}))
    os.replace(tmp, out_path)
    return out_path


def _cached(rel: Release, cache: str) -> str | None:
    if rel.dist in SLIM_MEMBERS and rel.wheel:
        path = _slim_path(rel, cache)
        if os.path.exists(path):
            with zipfile.ZipFile(path) as zf:
                meta = json.loads(zf.read(MANIFEST))
            if tuple(meta["members"]) == SLIM_MEMBERS[rel.dist] and meta["sha256"] == rel.sha256:
                return path
        return None
    if rel.wheel:
        path = os.path.join(cache, rel.wheel)
        if os.path.exists(path) and (rel.sha256 is None or _sha256(path) == rel.sha256):
            return path
        return None
    prefix = f"{rel.dist.replace('-', '_')}-{rel.version}-"
    for fn in sorted(os.listdir(cache)):
        if fn.startswith(prefix) and fn.endswith(".whl"):
            return os.path.join(cache, fn)
    return None


def download(rel: Release, cache: str) -> str:
    """Path of `rel`'s wheel in `cache`, downloading it with pip (no dependencies) when missing."""
    os.makedirs(cache, exist_ok=True)
    path = _cached(rel, cache)
    if path:
        return path
    dest = os.path.join(cache, "full") if rel.dist in SLIM_MEMBERS else cache
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--ignore-requires-python",
        "--disable-pip-version-check", "--quiet", "-d", dest, f"{rel.dist}=={rel.version}",
    ]
    # no local constraint or find-links: the index's build of exactly this release (torch: no 2.14.1 cap)
    env = {**os.environ, "PIP_CONFIG_FILE": os.devnull, "PIP_FIND_LINKS": ""}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout}{proc.stderr}")
    if rel.dist in SLIM_MEMBERS:
        full = os.path.join(dest, rel.wheel or "")
        if not os.path.exists(full) or (rel.sha256 and _sha256(full) != rel.sha256):
            raise RuntimeError(f"pip downloaded {rel.dist}=={rel.version} but {rel.wheel} is missing or its "
                               f"sha256 differs from the index's ({rel.sha256})")
        slim(full, _slim_path(rel, cache), SLIM_MEMBERS[rel.dist], rel.sha256)
        os.remove(full)
    path = _cached(rel, cache)
    if not path:
        raise RuntimeError(f"pip downloaded {rel.dist}=={rel.version} but the wheel is missing or its sha256 "
                           f"differs from the index's ({rel.sha256})")
    return path


def download_all(releases: list[Release], cache: str, jobs: int = 6) -> dict[tuple[str, str], str]:
    def one(rel: Release) -> tuple[tuple[str, str], str]:
        return (rel.dist, rel.version), download(rel, cache)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return dict(pool.map(one, releases))


def member_text(wheel: zipfile.ZipFile, name: str) -> str | None:
    """A data file inside an open (possibly cut-down) wheel, or None when it has none."""
    return wheel.read(name).decode("utf-8") if name in set(wheel.namelist()) else None


def module_source(wheel: zipfile.ZipFile, module: str) -> str | None:
    """Source text of `module` inside an open wheel, or None when the wheel has no such module."""
    base = module.replace(".", "/")
    names = set(wheel.namelist())
    if MANIFEST in names:
        kept = json.loads(wheel.read(MANIFEST))["members"]
        if not any(c in kept for c in (base + ".py", base + "/__init__.py")):
            raise RuntimeError(f"{wheel.filename} is cut down to {kept}, without {module}: add it to "
                               f"wheels.SLIM_MEMBERS and delete the cut-down wheels to download them again")
    for cand in (base + ".py", base + "/__init__.py"):
        if cand in names:
            return wheel.read(cand).decode("utf-8")
    return None
