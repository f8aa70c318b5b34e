"""The CLI in a separate process: report, --json, check's exit codes, --with what-if."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.helpers import ROOT


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cpshim", *args], capture_output=True, text=True, cwd=str(ROOT))


def test_report_json_is_the_report_dict():
    proc = cli("report", "--json", "--with", "transformers==4.57.6", "--with", "accelerate==1.11.0")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["schema_version"] == 1 and data["hypothetical"] is True
    assert data["versions"]["transformers"] == "4.57.6"
    by_id = {p["id"]: p for p in data["patches"]}
    assert by_id["trainer-cp-inputs"]["variant"] == "guard-relax"
    assert set(by_id["trainer-cp-inputs"]) >= {"id", "target", "variant", "state", "support", "reason", "requires"}


def test_check_exit_codes():
    ok = cli("check", "--with", "transformers==5.25.0", "--with", "accelerate==1.16.0")
    untested = cli("check", "--with", "transformers==5.26.0", "--with", "accelerate==1.16.0")
    bad = cli("check", "--with", "transformers==5.10.4", "--with", "accelerate==1.11.0")
    assert (ok.returncode, untested.returncode, bad.returncode) == (0, 2, 1)
    assert "accelerate" in bad.stdout and "pip install" in bad.stdout
    assert "5.25.0" in untested.stdout


def test_bad_with_argument_is_a_clear_error():
    proc = cli("check", "--with", "transformers")
    assert proc.returncode == 64 and "DIST==VERSION" in proc.stderr


def test_readable_table():
    proc = cli("report", "--with", "transformers==5.3.0", "--with", "accelerate==1.13.0")
    assert proc.returncode == 0 and "trainer-cp-inputs" in proc.stdout and "no-op" in proc.stdout
