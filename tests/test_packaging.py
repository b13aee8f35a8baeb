"""The built wheel is complete: installed into a fresh venv, every module of every room imports.

Editable installs find any module under the room folders, but a wheel holds only the packages
listed in pyproject.toml; this catches the difference (e.g. a nested subpackage nobody listed).
The fresh venv reuses this environment's dependencies through a .pth line pointing at its
site-packages; .pth files inside that folder are not processed, so the editable thinkgym finder
stays inactive and the thinkgym imported is the wheel's.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _room_modules() -> dict[str, list[str]]:
    """package -> module names, from the package-dir mapping and the files in each folder."""
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    out = {}
    for pkg, folder in cfg["package-dir"].items():
        files = sorted((ROOT / folder).glob("*.py"))
        out[pkg] = [pkg if f.stem == "__init__" else f"{pkg}.{f.stem}" for f in files]
        assert pkg in cfg["packages"], f"{pkg} is mapped but not listed in packages"
        nested = [p.parent for p in (ROOT / folder).glob("*/__init__.py")]
        assert not nested, f"rooms are flat; nested packages would be missing from the wheel: {nested}"
    return out


def test_wheel_installs_and_every_module_imports(tmp_path):
    # Build from a copy so the build/ and egg-info folders never touch the working tree.
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns(".venv", ".git", "build", "dist", "runs", "*.egg-info", "__pycache__",
                                    ".pytest_cache", ".hypothesis", "*.whl", "tests", "bench", "examples")
    shutil.copytree(ROOT, src, ignore=ignore)
    dist = tmp_path / "dist"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                        "-w", str(dist), str(src)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    (wheel,) = dist.glob("thinkgym-*.whl")

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index",
                        "--quiet", str(wheel)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "_thinkgym_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    modules = _room_modules()
    code = (
        "import importlib, json, sys\n"
        "mods = json.loads(sys.argv[1])\n"
        "import thinkgym\n"
        "failed = {}\n"
        "for m in mods:\n"
        "    try:\n"
        "        importlib.import_module(m)\n"
        "    except Exception as e:\n"
        "        failed[m] = f'{type(e).__name__}: {e}'\n"
        "import thinkgym.envs, gymnasium\n"
        "env = gymnasium.make('thinkgym/Countdown-v0')\n"
        "obs, info = env.reset(options={'index': 0})\n"
        "r = env.step(info['item']['metadata']['solution'])[1]\n"
        "print(json.dumps({'file': thinkgym.__file__, 'failed': failed, 'reward': r}))\n"
    )
    flat = [m for ms in modules.values() for m in ms]
    r = subprocess.run([str(py), "-c", code, json.dumps(flat)], capture_output=True, text=True, timeout=540,
                       cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
                                          "VLLM_ENABLE_V1_MULTIPROCESSING": "0"})
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["file"].startswith(str(site)), out["file"]  # the wheel's thinkgym, not the editable one
    assert out["failed"] == {}, out["failed"]
    assert out["reward"] == 1.0
    # The console script from the wheel works too.
    r = subprocess.run([str(venv / "bin" / "thinkgym"), "envs", "--json"], capture_output=True, text=True,
                       timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "thinkgym/Countdown-v0" in {e["id"] for e in json.loads(r.stdout)}
