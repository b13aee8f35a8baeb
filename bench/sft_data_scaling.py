"""Is the demo's SFT policy short of traced data, or of model and compute? SFT on more traces for
the same number of steps, everything else as in the demo.

    python bench/sft_data_scaling.py --examples 1000 3000 --root runs/sft-scaling
    python bench/sft_data_scaling.py --examples 1000 3000 --json bench/results/sft-data-scaling.json

Each run trains the demo's tiny model (one tokenizer and init for all runs, from the demo's own
trace corpus) on the first N traced items of the demo's SFT split for the demo's number of steps
(640: 40 epochs of 1000 traces) under the same annealed schedule, and prints the
best greedy accuracy on the demo's 200 fresh dev items. GRPO's edge over SFT is its fresh,
untraced prompts: if more traces at equal compute do not lift SFT, extra prompts cannot lift RL
much either, and the ceiling is the model's.

A size whose ``ROOT/sft-N`` already holds a finished run of the same length is read, not rerun.
``--steps`` shortens every run (a smoke test, not a result):

    python bench/sft_data_scaling.py --examples 100 200 --steps 16 --root runs/sft-scaling-smoke
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path


def main() -> None:
    from thinkgym.demo import DemoConfig, _run, _write_yaml, build_data, sft_config
    from thinkgym.sft_coldstart.tiny import build_tiny_model

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    p.add_argument("--examples", type=int, nargs="+", default=[1000, 3000], help="traced SFT items per run")
    p.add_argument("--seed", type=int, default=0, help="the demo seed (data splits, init, SFT)")
    p.add_argument("--steps", type=int, default=None,
                   help="SFT steps per run (default: the demo's, 640); fewer is a smoke test, not a result")
    p.add_argument("--root", default="runs/sft-scaling")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    from thinkgym.demo import MAX_SEED

    if any(n < 1 for n in args.examples) or len(set(args.examples)) != len(args.examples):
        p.error(f"--examples must be distinct sizes >= 1, got {args.examples}")
    if not 0 <= args.seed <= MAX_SEED:
        p.error(f"--seed must be in [0, {MAX_SEED}], got {args.seed}")
    if args.steps is not None and args.steps < 1:
        p.error(f"--steps must be >= 1, got {args.steps}")

    base = DemoConfig(seed=args.seed)
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    demo_data = build_data(DemoConfig(seed=args.seed, grpo_steps=1), root / "tokenizer-corpus")
    tiny = build_tiny_model(root / "tiny-init", base.tiny_config(), corpus=demo_data["corpus"])

    steps = math.ceil(base.sft_epochs * math.ceil(base.sft_examples / base.sft_micro_batch))  # the demo's SFT steps
    steps = args.steps or steps
    runs = []
    for n in args.examples:
        out = root / f"sft-{n}"
        done = out / "sft" / "result.json"
        if done.is_file() and json.loads(done.read_text())["steps"] != steps:
            raise SystemExit(f"{done}: a run of {json.loads(done.read_text())['steps']} steps, not {steps}: "
                             f"use another --root")
        if not done.is_file():
            cfg = DemoConfig(seed=args.seed, sft_examples=n, grpo_steps=1)
            data = build_data(cfg, out)
            yml = _write_yaml(out / "sft.yaml", sft_config(cfg, str(tiny), out / "sft", data["dir"], max_steps=steps))
            print(f"$ SFT on {n} traces, {steps} steps ({steps * base.sft_micro_batch / n:.1f} epochs)", flush=True)
            _run([sys.executable, "-m", "thinkgym.sft_coldstart.train", str(yml)], out / "sft.log", f"sft-{n}")
        res = json.loads((out / "sft" / "result.json").read_text())
        rows = [json.loads(ln) for ln in (out / "sft" / "metrics.jsonl").read_text().splitlines() if ln.strip()]
        curve = [[r["step"], r["eval/accuracy"]] for r in rows if r.get("eval/accuracy") is not None]
        runs.append({"traces": n, "steps": res["steps"], "best_dev_accuracy": res.get("best_eval_accuracy"),
                     "best_step": res.get("best_step"), "dev_accuracy_curve": curve})
        print(f"{n} traces: {res['steps']} steps, best dev accuracy {res.get('best_eval_accuracy')} "
              f"at step {res.get('best_step')}", flush=True)

    ref = runs[0]["best_dev_accuracy"] or 0.0
    for r in runs[1:]:
        print(f"{r['traces']} vs {runs[0]['traces']} traces: best dev accuracy {r['best_dev_accuracy'] or 0.0:.3f} vs "
              f"{ref:.3f} ({(r['best_dev_accuracy'] or 0.0) - ref:+.3f})")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"seed": args.seed, "steps": steps, "dev_items": base.dev_items, "cpus": os.cpu_count(),
                                               "date": time.strftime("%Y-%m-%d", time.gmtime()), "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
