"""Code-grader throughput: local sandbox and Docker backend against a bare subprocess, same run.

Two workloads: a trivial program (one function case) and a typical function with 10 cases.
For each backend: sequential latency (p50/p95 of one grade) and parallel throughput (grades/s
with ``--workers`` threads). The peer is what a grader without isolation does: one
``subprocess.run([python, -c, program + calls])`` per grade, results compared in this process.
Two peers are shown: this environment's ``python`` (as a naive grader would call it, with
site-packages) and the bare interpreter with ``-I -S`` (the fastest possible start).

    python bench/bench_sandbox.py                 # n=40 per measurement, 2 workers
    python bench/bench_sandbox.py --n 100 --workers 4 --no-docker
    sudo python bench/bench_sandbox.py --cpu       # + CPU per grade (cgroup v1 cpuacct)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

TRIVIAL = ("def f(x):\n    return x\n", {"type": "function", "entry_point": "f", "cases": [{"args": [1], "expected": 1}]})
TYPICAL = (
    "def f(nums, k):\n    seen = {}\n    for i, x in enumerate(nums):\n        if k - x in seen:\n"
    "            return [seen[k - x], i]\n        seen[x] = i\n    return []\n",
    {
        "type": "function",
        "entry_point": "f",
        "cases": [{"args": [list(range(i, i + 50)), 2 * i + 97], "expected": [48, 49]} for i in range(10)],
    },
)


def bare_grade(python: list[str], program: str, tests: dict) -> float:
    """No isolation: run the program and the calls in one subprocess, compare here."""
    calls = "\nimport json\n" + "".join(
        f"print(json.dumps({tests['entry_point']}(*{c['args']!r})))\n" for c in tests["cases"]
    )
    r = subprocess.run([*python, "-c", program + calls], capture_output=True, timeout=30)
    got = [json.loads(line) for line in r.stdout.decode().splitlines()]
    return float(got == [c["expected"] for c in tests["cases"]])


class CpuMeter:
    """CPU seconds used by this process and everything it starts (a cgroup v1 ``cpuacct`` group).

    On a shared machine wall-clock numbers mostly measure the neighbours; CPU per grade does
    not, and ``cores / cpu_per_grade`` is the throughput an idle machine would reach. Docker
    containers run outside this group, so the Docker backend gets no CPU number.
    """

    ROOT = "/sys/fs/cgroup/cpuacct"

    def __init__(self) -> None:
        import os

        self.path = os.path.join(self.ROOT, f"thinkgym-bench-{os.getpid()}")
        os.makedirs(self.path)
        with open(os.path.join(self.path, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))

    def read(self) -> float:
        with open(self.path + "/cpuacct.usage") as f:
            return int(f.read()) / 1e9

    def close(self) -> None:
        import os

        with open(self.ROOT + "/cgroup.procs", "w") as f:
            f.write(str(os.getpid()))
        for _ in range(50):
            try:
                os.rmdir(self.path)
                return
            except OSError:
                time.sleep(0.1)


def measure(fn, n: int, workers: int, meter: "CpuMeter | None" = None) -> dict:
    for _ in range(3):  # warm-up (pools, caches, container start)
        assert fn() == 1.0
    lat = []
    c0 = meter.read() if meter else 0.0
    for _ in range(n):
        t0 = time.perf_counter()
        assert fn() == 1.0
        lat.append(time.perf_counter() - t0)
    cpu_ms = 1000 * (meter.read() - c0) / n if meter else float("nan")
    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as ex:
        scores = list(ex.map(lambda _: fn(), range(n)))
    wall = time.perf_counter() - t0
    assert all(s == 1.0 for s in scores)
    lat.sort()
    return {"p50_ms": 1000 * statistics.median(lat), "p95_ms": 1000 * lat[round(0.95 * (len(lat) - 1))],
            "grades_per_s": n / wall, "cpu_ms": cpu_ms}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=40, help="grades per measurement")
    ap.add_argument("--workers", type=int, default=2, help="parallel graders for the throughput number")
    ap.add_argument("--no-docker", action="store_true", help="skip the Docker backend")
    ap.add_argument("--cpu", action="store_true", help="also measure CPU per grade (needs a writable cgroup v1 cpuacct)")
    args = ap.parse_args()
    for k in ("n", "workers"):
        if getattr(args, k) < 1:
            ap.error(f"--{k} must be >= 1, got {getattr(args, k)}")
    from thinkgym.verifiers.code import grade_program
    from thinkgym.verifiers.sandbox import SandboxUnavailable, _base_python, get_sandbox

    try:
        meter = CpuMeter() if args.cpu else None
    except OSError as e:
        ap.error(f"--cpu needs a writable cgroup v1 cpuacct hierarchy at {CpuMeter.ROOT} (run as root): {e}")
    try:
        get_sandbox("local")  # after the meter: the sandbox's processes belong to its group
    except SandboxUnavailable as e:
        if meter:
            meter.close()
        ap.error(str(e))

    base_exe, _ = _base_python()
    backends = {
        "bare subprocess (env python)": lambda p, t: bare_grade([sys.executable], p, t),
        "bare subprocess (python -I -S)": lambda p, t: bare_grade([base_exe, "-I", "-S"], p, t),
        "local sandbox": lambda p, t: grade_program(p, t, backend="local").score,
    }
    docker_note = "docker backend skipped: --no-docker" if args.no_docker else None
    if not args.no_docker:
        try:
            get_sandbox("docker")
            backends["docker sandbox"] = lambda p, t: grade_program(p, t, backend="docker").score
        except SandboxUnavailable as e:
            docker_note = f"docker backend skipped: {e}"
            print(docker_note)
    rows = {}
    try:
        for wname, (prog, tests) in (("trivial", TRIVIAL), ("function x10 cases", TYPICAL)):
            for bname, fn in backends.items():
                m = meter if bname != "docker sandbox" else None
                rows[(wname, bname)] = measure(lambda: fn(prog, tests), args.n, args.workers, m)
    finally:
        get_sandbox("local").close()
        if meter:
            meter.close()
    import os

    cores = os.cpu_count() or 1
    peer = "bare subprocess (env python)"
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    print(f"\ncode grader, n={args.n}, {args.workers} workers, {cores} CPUs, load average {load} at the end")
    print(f"{'workload':<20} {'backend':<32} {'p50 ms':>8} {'p95 ms':>8} {'grades/s':>9} {'p50/peer':>9}"
          + (f" {'cpu ms':>7} {'idle/s':>7}" if meter else ""))
    for (wname, bname), r in rows.items():
        ratio = r["p50_ms"] / rows[(wname, peer)]["p50_ms"]
        line = f"{wname:<20} {bname:<32} {r['p50_ms']:8.1f} {r['p95_ms']:8.1f} {r['grades_per_s']:9.1f} {ratio:8.2f}x"
        if meter:
            line += f" {r['cpu_ms']:7.1f} {cores * 1000 / r['cpu_ms']:7.1f}" if r["cpu_ms"] == r["cpu_ms"] else "       -       -"
        print(line)
    print(f"(peer = {peer}; goal: local sandbox p50 <= 2x peer and >= 20 grades/s"
          + ("; cpu ms = CPU per grade, idle/s = cores / cpu per grade" if meter else "") + ")")
    if docker_note:
        print(docker_note)


if __name__ == "__main__":
    main()
