"The set-up path a newcomer meets first: `make` checks the Python it will build the venv with."
import configparser
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def _fake_python(tmp_path:Path, version:str) -> Path:
    "An executable that answers every call like a Python of `version` answers the Makefile's version query."
    p = tmp_path / f"python{version}"
    p.write_text(f"#!/bin/sh\necho {version}\n")
    p.chmod(0o755)
    return p


def _check(py) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), "python-check", f"PY_SYS={py}"],
                          capture_output=True, text=True, timeout=60)


def test_python_check_names_the_python_it_found():
    r = _check(sys.executable)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"Python {sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}" in r.stdout
    assert sys.executable in r.stdout


@pytest.mark.parametrize("version", ["3.10.12", "3.9.18", "2.7.18"])
def test_python_check_refuses_an_old_python(tmp_path, version):
    r = _check(_fake_python(tmp_path, version))
    assert r.returncode != 0
    assert f"is Python {version}" in r.stdout and "needs Python >= 3.11" in r.stdout
    assert "make PY_SYS=" in r.stdout  # says how to point make at another interpreter


@pytest.mark.parametrize("version", ["3.11.0", "3.12.3", "3.13.1"])
def test_python_check_accepts_supported_versions(tmp_path, version):
    r = _check(_fake_python(tmp_path, version))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"Python {version}" in r.stdout


def test_python_check_missing_interpreter(tmp_path):
    r = _check(tmp_path / "no-such-python")
    assert r.returncode != 0 and "no Python found" in r.stdout


def test_package_metadata_claims_the_python_the_pins_need():
    cfg = configparser.ConfigParser(delimiters=["="]); cfg.read(ROOT / "settings.ini")
    assert cfg["DEFAULT"]["min_python"] == "3.11"
    make_min = [l for l in (ROOT / "Makefile").read_text().splitlines() if l.startswith("MIN_PYTHON")]
    assert make_min == ["MIN_PYTHON := 3.11"]
