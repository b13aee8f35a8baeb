"""Process-group setup: a torch extension build killed midway must not hang later runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from thinkgym.distributed import clear_stale_build_locks


def _lock(root: Path, name: str = "deepspeed_shm_comm") -> Path:
    d = root / "py311_cpu" / name
    d.mkdir(parents=True)
    (d / "lock").touch()
    return d / "lock"


def test_stale_lock_is_removed_and_a_held_one_is_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    stale = _lock(tmp_path, "dead_build")
    held = _lock(tmp_path, "live_build")
    # A live build holds its lock open, as torch's FileBaton does for the whole compile.
    holder = subprocess.Popen([sys.executable, "-c", f"import os, time; os.open({str(held)!r}, os.O_RDONLY); time.sleep(60)"])
    try:
        deadline = time.monotonic() + 20
        while not any(os.path.realpath(held) == os.readlink(f"/proc/{holder.pid}/fd/{fd}")
                      for fd in os.listdir(f"/proc/{holder.pid}/fd")):
            assert time.monotonic() < deadline, "the holder never opened the lock"
            time.sleep(0.05)
        assert clear_stale_build_locks() == [str(stale)]
        assert not stale.exists()
        assert held.exists()
    finally:
        holder.kill()
        holder.wait()
    assert clear_stale_build_locks() == [str(held)]  # its holder is gone: now it is stale


@pytest.mark.slow
def test_setup_distributed_survives_a_build_killed_midway(tmp_path):
    """DeepSpeed builds its CPU shared-memory op when the process group starts. A lock left by a
    killed build used to make every later start wait forever; now it starts."""
    from torch.utils.cpp_extension import get_default_build_root

    ext = tmp_path / "ext"
    built = Path(get_default_build_root()) / f"py{sys.version_info.major}{sys.version_info.minor}_cpu" / "deepspeed_shm_comm"
    if built.is_dir():  # reuse this machine's build so the test does not compile for a minute
        shutil.copytree(built, ext / "deepspeed_shm_comm", ignore=shutil.ignore_patterns("lock"))
    else:
        (ext / "deepspeed_shm_comm").mkdir(parents=True)
    (ext / "deepspeed_shm_comm" / "lock").touch()
    code = textwrap.dedent("""
        from thinkgym.distributed import setup_distributed
        print("rank, world:", setup_distributed()[:2], flush=True)
    """)
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(ext)}
    env.pop("MASTER_PORT", None)
    try:
        p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        pytest.fail("setup_distributed waited on the stale build lock")
    assert p.returncode == 0, p.stderr[-2000:]
    assert "rank, world: (0, 1)" in p.stdout
    assert "stale torch extension build lock" in p.stderr
    assert not (ext / "deepspeed_shm_comm" / "lock").exists()
