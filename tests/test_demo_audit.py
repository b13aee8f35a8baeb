"""`thinkgym demo` on bad run directories and signals, without running the pipeline's stages."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

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
    script = f"""
import sys, typer
import thinkgym.demo as demo
from pathlib import Path
def fake(cfg, run):
    demo._run([sys.executable, "-c", "import os, time; open({str(tmp_path / 'pid')!r}, 'w').write(str(os.getpid())); time.sleep(60)"],
              run / "x.log", "sft")
demo.build_data = fake
app = typer.Typer()
@app.callback()
def _root(): pass
demo.register(app)
app(["demo", "--quick", "-o", {str(tmp_path / 'run')!r}])
"""
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
