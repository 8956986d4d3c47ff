"""A wheel install (not editable) finds the shipped registry and adapter, as a user's `pip install` would."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_wheel_install_finds_the_shipped_adapter(tmp_path: Path):
    offline = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []  # else PyPI's setuptools
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *offline, "-w", str(tmp_path / "dist"),
                    str(REPO)], check=True, cwd=tmp_path)
    wheel = next((tmp_path / "dist").glob("instag-*.whl"))

    # A fresh environment with the wheel, which borrows this one's dependencies (not its editable instag).
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "zz_deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True)

    env = {k: v for k, v in os.environ.items() if k not in ("INSTAG_MODELS_DIR", "PYTHONPATH")}
    out = subprocess.run([str(venv / "bin" / "instag"), "models", "prepare", "local"], check=True,
                         capture_output=True, text=True, cwd=tmp_path, env={**env, "COLUMNS": "400"}).stdout
    shipped = venv / "share" / "instag" / "models" / "instag-tagger-smollm2-135m"
    assert (shipped / "adapter_model.safetensors").is_file()
    assert f"adapter {shipped}" in " ".join(out.split()), out
    where = subprocess.run([str(py), "-c", "import instag; print(instag.__file__)"], check=True,
                           capture_output=True, text=True, cwd=tmp_path).stdout
    assert where.startswith(str(site)), where  # the wheel's copy ran, not the source tree's
