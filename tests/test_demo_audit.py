"""`thinkgym demo` on bad run directories and signals, without running the pipeline's stages."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from conftest import sigint_default
from typer.testing import CliRunner

from thinkgym.cli import app
from thinkgym.demo import DemoConfig


def test_refuses_a_directory_that_holds_another_project(tmp_path):
    (tmp_path / "config.json").write_text('{"mine": 1}')
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "sft.jsonl").write_text("precious\n")
    r = CliRunner().invoke(app, ["demo", "--quick", "--output-dir", str(tmp_path)])
    assert r.exit_code == 2 and "holds no earlier demo run" in r.output, r.output
    assert (tmp_path / "config.json").read_text() == '{"mine": 1}'
    assert (tmp_path / "data" / "sft.jsonl").read_text() == "precious\n"


def test_rerun_drops_the_earlier_runs_results_before_a_stage_can_fail(tmp_path, monkeypatch):
    import dataclasses

    import thinkgym.demo as demo

    (tmp_path / "config.json").write_text(json.dumps(dataclasses.asdict(DemoConfig.quick_preset())))
    for name in ("summary.json", "report.md", "curves.png"):
        (tmp_path / name).write_text("from the earlier run")

    def fail(*a, **k):
        raise RuntimeError("demo stage 'sft' failed")

    monkeypatch.setattr(demo, "build_data", fail)
    r = CliRunner().invoke(app, ["demo", "--quick", "--output-dir", str(tmp_path)])
    assert r.exit_code == 1 and "stage 'sft' failed" in r.output, r.output
    assert not any((tmp_path / n).exists() for n in ("summary.json", "report.md", "curves.png"))


def test_sigterm_kills_the_running_stage(tmp_path):
    """The stage's subprocess dies with the demo instead of training on, orphaned."""
    stage = [sys.executable, "-c", f"import os, time; open({str(tmp_path / 'pid')!r}, 'w').write(str(os.getpid())); time.sleep(60)"]
    script = _cli_script(tmp_path, repr(stage))
    p = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True)
    pid_file = tmp_path / "pid"
    for _ in range(600):
        if pid_file.exists() and pid_file.read_text():
            break
        time.sleep(0.05)
    child = int(pid_file.read_text())
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=30)
    assert p.returncode == 128 + signal.SIGTERM and "terminated by signal" in err, err
    time.sleep(0.2)
    try:
        os.kill(child, 0)
        alive = True
    except ProcessLookupError:
        alive = False
    if alive:
        os.kill(child, signal.SIGKILL)
    assert not alive


# ---- a stop reaches the stage's whole process group ----------------------------------------

# A stage that starts a worker, records both pids and its process group, notes a SIGINT and sleeps.
# The worker may leave the stage's process group (setsid) and may ignore SIGINT and SIGTERM.
_WORKER = """
import os, signal, sys, time
pid_file, mode = sys.argv[1], sys.argv[2]
if "setsid" in mode:
    os.setsid()
if "deaf" in mode:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
open(pid_file + ".tmp", "w").write(str(os.getpid()))
os.rename(pid_file + ".tmp", pid_file)
time.sleep(60)
"""
_STAGE = """
import os, subprocess, sys, time
d, mode = sys.argv[1], sys.argv[2]
subprocess.Popen([sys.executable, "-c", {worker!r}, os.path.join(d, "worker"), mode])
open(os.path.join(d, "stage.tmp"), "w").write(f"{{os.getpid()}} {{os.getpgid(0)}}")
os.rename(os.path.join(d, "stage.tmp"), os.path.join(d, "stage"))
try:
    time.sleep(60)
except KeyboardInterrupt:
    open(os.path.join(d, "sigint"), "w").close()
"""


def _stage_cmd(tmp_path, mode: str) -> str:
    """Python source of the stage command list, for a script that calls ``demo._run``."""
    return repr([sys.executable, "-c", _STAGE.format(worker=_WORKER), str(tmp_path), mode])


def _cli_script(tmp_path, stage_cmd: str) -> str:
    """The demo CLI with a 1 s stop grace, whose first stage runs ``stage_cmd`` (Python source of
    a command list, e.g. :func:`_stage_cmd`)."""
    return f"""
import sys, typer
import thinkgym.demo as demo
demo.STOP_GRACE_S = 1.0
def fake(cfg, run):
    demo._run({stage_cmd}, run / "x.log", "sft")
demo.build_data = fake
app = typer.Typer()
@app.callback()
def _root(): pass
demo.register(app)
app(["demo", "--quick", "-o", {str(tmp_path / 'run')!r}])
"""


def _wait_for(path, timeout: float = 30.0) -> str:
    end = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < end, f"{path} never appeared"
        time.sleep(0.05)
    return path.read_text()


def _gone(pid: int, within: float = 5.0) -> bool:
    """Whether ``pid`` has ended (or is a zombie) within ``within`` seconds."""
    end = time.monotonic() + within
    while True:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        if time.monotonic() > end:
            return False
        time.sleep(0.05)


def _started(tmp_path, script: str) -> tuple[subprocess.Popen, int, int]:
    """The script in a process group of its own (a terminal's foreground job), once its stage's
    worker runs: (process, stage pid, worker pid)."""
    p = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True, start_new_session=True,
                         preexec_fn=sigint_default)
    try:
        worker = int(_wait_for(tmp_path / "worker"))
        stage = int(_wait_for(tmp_path / "stage").split()[0])
    except BaseException:
        os.killpg(p.pid, signal.SIGKILL)
        raise
    return p, stage, worker


def _reap(*pids: int) -> None:
    for pid in pids:
        if not _gone(pid, within=0):
            os.kill(pid, signal.SIGKILL)


def test_sigterm_kills_the_stages_workers(tmp_path):
    """SIGTERM to the demo alone: the stage's worker dies with the stage instead of running on, orphaned."""
    p, stage, worker = _started(tmp_path, _cli_script(tmp_path, _stage_cmd(tmp_path, "plain")))
    try:
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=30)
        assert p.returncode == 128 + signal.SIGTERM and "terminated by signal" in err, err
        assert _gone(stage) and _gone(worker), "the stage's worker outlived the demo"
    finally:
        _reap(stage, worker)


def test_sigterm_kills_a_worker_that_left_the_stages_process_group(tmp_path):
    p, stage, worker = _started(tmp_path, _cli_script(tmp_path, _stage_cmd(tmp_path, "setsid")))
    try:
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=30)
        assert p.returncode == 128 + signal.SIGTERM, err
        assert _gone(stage) and _gone(worker), "a setsid'd worker outlived the demo"
    finally:
        _reap(stage, worker)


def test_ctrl_c_is_forwarded_to_the_stage_and_kills_a_deaf_worker(tmp_path):
    """A terminal's Ctrl-C signals the demo's process group, which the stage has left: the demo
    forwards the SIGINT to the stage's group, then SIGKILLs a worker that ignores it."""
    p, stage, worker = _started(tmp_path, _cli_script(tmp_path, _stage_cmd(tmp_path, "deaf")))
    try:
        stage_pid, stage_group = map(int, (tmp_path / "stage").read_text().split())
        assert stage_group == stage_pid != p.pid  # the Ctrl-C below reaches the stage only through the demo
        os.killpg(p.pid, signal.SIGINT)
        _, err = p.communicate(timeout=30)
        assert p.returncode == 128 + signal.SIGINT and "terminated by signal" in err, err
        assert (tmp_path / "sigint").exists(), "the stage never saw the Ctrl-C"
        assert _gone(stage) and _gone(worker), "a worker that ignores SIGINT and SIGTERM outlived the demo"
    finally:
        _reap(stage, worker)


def test_an_exception_in_the_demo_stops_the_stages_group(tmp_path):
    """Without the CLI's handlers: a KeyboardInterrupt (default SIGINT) or any other exception raised
    while a stage runs stops the stage's whole group; the exception goes on."""
    for sig, raised in ((signal.SIGINT, "KeyboardInterrupt"), (signal.SIGUSR1, "RuntimeError: boom")):
        d = tmp_path / sig.name
        d.mkdir()
        script = f"""
import signal
from pathlib import Path
import thinkgym.demo as demo
def boom(*_):
    raise RuntimeError("boom")
signal.signal(signal.SIGUSR1, boom)
demo._run({_stage_cmd(d, "plain")}, Path({str(d / 'x.log')!r}), "sft")
"""
        p, stage, worker = _started(d, script)
        try:
            p.send_signal(sig)
            _, err = p.communicate(timeout=30)
            assert p.returncode != 0 and raised in err, err
            assert _gone(stage) and _gone(worker), f"the stage's worker outlived a {raised.split(':')[0]}"
            assert (d / "sigint").exists() == (sig == signal.SIGINT)  # KeyboardInterrupt forwards SIGINT
        finally:
            _reap(stage, worker)
