"""The demo over several seeds: mean and spread of each policy's held-out accuracy and of GRPO's
gain over the better baseline (converged SFT or the equal-time SFT control).

    python bench/demo_seeds.py --seeds 0 1 2 --root runs/demo-seeds
    python bench/demo_seeds.py --seeds 0 1 2 --root runs/demo-seeds --json bench/results/demo-3-seeds.json

Each seed is one ``thinkgym demo --seed S --output-dir ROOT/seed-S`` run, one after another (the
demo's minutes are only meaningful on an otherwise idle machine). A seed whose directory already
holds a ``summary.json`` is read, not rerun (it must come from the same mode: ``--quick`` runs
and full runs are not mixed). ``--quick`` runs the demo's smoke-test sizes (a minute or two per
seed): a check that the pipeline runs, not a result.

    python bench/demo_seeds.py --seeds 0 --root runs/demo-seeds-quick --quick
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


def run_seed(root: Path, seed: int, quick: bool = False) -> dict:
    out = root / f"seed-{seed}"
    if not (out / "summary.json").is_file():
        cmd = [sys.executable, "-m", "thinkgym.cli", "demo", "--seed", str(seed), "--output-dir", str(out)]
        if quick:
            cmd.append("--quick")
        print(f"$ {' '.join(cmd)}", flush=True)
        if subprocess.run(cmd).returncode:
            raise SystemExit(f"seed {seed}: the demo failed (command above); its stage logs are in {out}")
    summary = json.loads((out / "summary.json").read_text())
    if bool(summary.get("quick")) != quick:
        raise SystemExit(f"{out}/summary.json is from a {'quick' if summary.get('quick') else 'full'} demo run; "
                         f"this is a {'quick' if quick else 'full'} one: use another --root")
    return summary


def spread(xs: list[float]) -> dict:
    return {"mean": statistics.fmean(xs), "min": min(xs), "max": max(xs),
            "std": statistics.stdev(xs) if len(xs) > 1 else 0.0, "values": xs}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--root", default="runs/demo-seeds")
    p.add_argument("--json", help="also write the table here")
    p.add_argument("--quick", action="store_true",
                   help="the demo's smoke-test sizes (thinkgym demo --quick): not a result")
    args = p.parse_args()
    from thinkgym.demo import MAX_SEED

    bad = [s for s in args.seeds if not 0 <= s <= MAX_SEED]
    if bad or len(set(args.seeds)) != len(args.seeds):
        p.error(f"--seeds must be distinct and in [0, {MAX_SEED}], got {args.seeds}")

    runs = [run_seed(Path(args.root), s, args.quick) for s in args.seeds]
    res: dict = {"seeds": args.seeds, "quick": args.quick, "date": time.strftime("%Y-%m-%d", time.gmtime()),
                 "cpus": os.cpu_count()}
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
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
