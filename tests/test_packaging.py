"""Packaging: a wheel built from the repo carries the shipped configs, so `reinforge train NAME` works from any
install, not only an editable one."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_ships_the_configs_and_runs_outside_the_repo(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheels), str(ROOT)], check=True)
    wheel = next(wheels.glob("reinforge-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(p.name for p in (ROOT / "src" / "reinforge" / "configs").glob("*.yaml"))
    assert shipped and all(f"reinforge/configs/{n}" in names for n in shipped)
    # a fresh venv that imports reinforge from the wheel and borrows this venv's dependencies (torch & co) through
    # a path entry (the editable install's own .pth hooks there are not processed)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    deps = [p for p in sys.path if p.endswith("site-packages")]
    (Path(site) / "borrowed_deps.pth").write_text("\n".join(deps) + "\n")
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True)
    run = tmp_path / "elsewhere"
    run.mkdir()
    env = {**os.environ, "PYTHONPATH": ""}
    where = subprocess.run([str(py), "-c", "import reinforge; print(reinforge.__file__)"], cwd=run, env=env,
                           capture_output=True, text=True, check=True).stdout
    assert str(venv) in where, where
    # the shipped config resolves by name; with no init it stops at the clear "set init=PATH" error (exit 2)
    res = subprocess.run([str(venv / "bin" / "reinforge"), "train", "tabletop_ppo_flow_sde", "resume=false"],
                         cwd=run, env=env, capture_output=True, text=True)
    assert res.returncode == 2 and "set init=PATH" in res.stderr, res.stderr
