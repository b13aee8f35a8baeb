"""What the demo's policies write in their think blocks: is the arithmetic real, or decoration?

    python bench/demo_diagnostics.py runs/demo-seeds/seed-0 runs/demo-seeds/seed-1 runs/demo-seeds/seed-2
    python bench/demo_diagnostics.py runs/demo --json bench/results/demo-diagnostics.json

Reads the held-out samples that ``thinkgym demo`` wrote (``eval/<policy>/greedy``, nothing is
sampled again) and prints, for each policy, :func:`thinkgym.demo.think_arithmetic` next to its
accuracy and temperature-1 pass@k. New demo runs carry the same numbers in ``summary.json``; this
also reads runs from before that.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from thinkgym.demo import _jsonl, fmt_share, think_arithmetic

POLICIES = ("sft", "sft_control", "grpo")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", help="finished demo run directories")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    runs = list(map(Path, args.runs))
    # Results are keyed by the run directory's name (seed-0, ...), or its path where two names clash.
    names = [r.name for r in runs]
    keys = [n if names.count(n) == 1 else str(r) for n, r in zip(names, runs)]
    if len(set(keys)) != len(keys):
        p.error("a run directory is given twice")
    out: dict = {}
    heldout: dict = {}
    for key, run in zip(keys, runs):
        if not (run / "summary.json").is_file():
            p.error(f"{run}: no summary.json (not a finished demo run)")
        summary = json.loads((run / "summary.json").read_text())
        k = summary["config"]["eval_samples"]
        heldout[key] = summary.get("heldout_items")
        missing = [pol for pol in POLICIES if pol not in summary
                   or not (run / "eval" / pol / "greedy" / "samples.jsonl").is_file()]
        if missing:
            p.error(f"{run}: no held-out results for {missing} (summary.json or eval/<policy>/greedy/samples.jsonl)")
        out[key] = res = {}
        print(f"\n{run}\n{'policy':<12} {'greedy':>7} {'pass@1':>7} {f'pass@{k}':>7} {'lines wrong':>12} "
              f"{'first wrong':>12} {'last wrong':>11} {'right, lines ok':>16} {'wrong, claims T':>16}")
        for pol in POLICIES:
            res[pol] = d = {key: summary[pol][key] for key in ("accuracy", "pass@1", f"pass@{k}")}
            d.update(think_arithmetic(_jsonl(run / "eval" / pol / "greedy" / "samples.jsonl")))
            print(f"{pol:<12} {d['accuracy']:>7.3f} {d['pass@1']:>7.3f} {d[f'pass@{k}']:>7.3f} "
                  f"{fmt_share(d['think_lines_wrong']):>12} {fmt_share(d['first_line_wrong']):>12} "
                  f"{fmt_share(d['last_line_wrong']):>11} {fmt_share(d['right_lines_ok']):>16} "
                  f"{fmt_share(d['wrong_claims_target']):>16}")
    if args.json:
        # The shape of bench/results/demo-diagnostics.json.
        n = set(heldout.values())
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({
            "date": time.strftime("%Y-%m-%d", time.gmtime()), "cpus": os.cpu_count(),
            "heldout_items": n.pop() if len(n) == 1 else heldout, "seeds": out}, indent=1))


if __name__ == "__main__":
    main()
