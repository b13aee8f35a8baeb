"""The demo over several seeds: mean and spread of each policy's held-out accuracy and of GRPO's
gain over the better baseline (converged SFT or the equal-time SFT control).

    python bench/demo_seeds.py --seeds 0 1 2 --root runs/demo-seeds
    python bench/demo_seeds.py --seeds 0 1 2 --root runs/demo-seeds --json bench/results/demo-3-seeds.json

Each seed is one ``thinkgym demo --seed S --output-dir ROOT/seed-S`` run, one after another (the
demo's minutes are only meaningful on an otherwise idle machine). A seed whose directory already
holds a ``summary.json`` is read, not rerun.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

POLICIES = ("sft", "sft_control", "grpo")


def run_seed(root: Path, seed: int) -> dict:
    out = root / f"seed-{seed}"
    if not (out / "summary.json").is_file():
        cmd = [sys.executable, "-m", "thinkgym.cli", "demo", "--seed", str(seed), "--output-dir", str(out)]
        print(f"$ {' '.join(cmd)}", flush=True)
        subprocess.run(cmd, check=True)
    return json.loads((out / "summary.json").read_text())


def spread(xs: list[float]) -> dict:
    return {"mean": statistics.fmean(xs), "min": min(xs), "max": max(xs),
            "std": statistics.stdev(xs) if len(xs) > 1 else 0.0, "values": xs}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--root", default="runs/demo-seeds")
    p.add_argument("--json", help="also write the table here")
    args = p.parse_args()

    runs = [run_seed(Path(args.root), s) for s in args.seeds]
    res: dict = {"seeds": args.seeds, "date": time.strftime("%Y-%m-%d", time.gmtime()), "cpus": os.cpu_count()}
    for key in ("accuracy", "pass@1"):
        res[key] = {pol: spread([r[pol][key] for r in runs]) for pol in POLICIES}
    res["gain_vs_best_baseline"] = spread([r["gain_vs_best_baseline"] for r in runs])
    res["gain_pass@1_vs_best_baseline"] = spread(
        [r["grpo"]["pass@1"] - max(r["sft"]["pass@1"], r["sft_control"]["pass@1"]) for r in runs])
    res["minutes"] = spread([r["minutes"] for r in runs])
    res["heldout_items"] = runs[0]["heldout_items"]

    print(f"\nheld-out countdown, {res['heldout_items']} items, seeds {args.seeds}: mean [min, max]")
    for key in ("accuracy", "pass@1"):
        for pol in POLICIES:
            s = res[key][pol]
            print(f"  {key:9s} {pol:12s} {s['mean']:.3f} [{s['min']:.3f}, {s['max']:.3f}]")
    for key in ("gain_vs_best_baseline", "gain_pass@1_vs_best_baseline", "minutes"):
        s = res[key]
        print(f"  {key:30s} {s['mean']:+.3f} [{s['min']:+.3f}, {s['max']:+.3f}]" if key != "minutes"
              else f"  {key:30s} {s['mean']:.1f} [{s['min']:.1f}, {s['max']:.1f}]")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
