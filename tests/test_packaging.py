"""The wheel: every package of the source tree is in it, and the presets (top-level configs/) import from it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_holds_every_package_and_the_presets(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for folder in ("selfocc_ns", "configs"):
        shutil.copytree(REPO / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels)],
        check=True, capture_output=True, text=True,
    )
    (wheel,) = wheels.glob("selfocc_ns-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())

    expected = {f"selfocc_ns/{p.relative_to(REPO / 'selfocc_ns').parent.as_posix()}/__init__.py".replace("/./", "/")
                for p in (REPO / "selfocc_ns").rglob("__init__.py")}
    expected |= {f"selfocc_ns/configs/{p.name}" for p in (REPO / "configs").glob("*.py")}
    assert expected - names == set(), "packages missing from the wheel (pyproject [tool.setuptools] packages)"

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    probe = ("import selfocc_ns.configs.tiny as t, selfocc_ns.configs.nuscenes_occ as o; "
             "print(t.__file__); print(t.trainer_config().method_name, o.trainer_config().method_name)")
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env={"PYTHONPATH": str(site), "PATH": ""},
                            capture_output=True, text=True, check=True)
    location, methods = result.stdout.strip().splitlines()[-2:]
    assert Path(location).is_relative_to(site)
    assert methods == "selfocc-tiny selfocc"
