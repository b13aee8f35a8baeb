"""Shared-prefix learner forward vs the plain forward (TRL's and verl's default), same batch.

A GRPO batch holds ``prompts`` groups of ``group`` completions that share their prompt. The plain
forward runs every row in full; thinkgym's (``grpo/forward.py``) runs each prompt once per
micro-batch, and each distinct completion once: ``--duplicates F`` makes a fraction F of each
group's completions copies of earlier ones (0.29 in the demo's rollouts at the start of GRPO),
and the script then also times the shared-prefix forward with every copy run. All
variants compute token logprobs and entropies and backpropagate the same loss; the script prints
step time, tokens through the model and the ratio, and checks that the logprobs agree (it exits
non-zero when they differ by more than ``--tolerance``). No vLLM, no DeepSpeed (their cost is the
same on both sides).

    python bench/bench_shared_prefix.py                                  # the demo's shape
    python bench/bench_shared_prefix.py --duplicates 0.29
    python bench/bench_shared_prefix.py --prompt-len 300 --completion-len 200 --model DIR
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace


def make_batch(args, vocab: int):
    import torch

    g = torch.Generator().manual_seed(args.seed)
    rows, gids = [], []
    for p in range(args.prompts):
        plen = int(args.prompt_len * (0.8 + 0.4 * torch.rand((), generator=g)))
        prompt = torch.randint(3, vocab, (plen,), generator=g).tolist()
        own: list[list[int]] = []
        for k in range(args.group):
            if own and k >= args.group - round(args.duplicates * args.group):  # a copy of an earlier completion
                comp = own[int(torch.randint(len(own), (), generator=g))]
            else:
                clen = int(args.completion_len * (0.5 + torch.rand((), generator=g)))
                comp = torch.randint(3, vocab, (max(1, clen),), generator=g).tolist()
                own.append(comp)
            rows.append((prompt, comp))
            gids.append(p)
    from thinkgym.grpo.forward import collate

    eps = [SimpleNamespace(input_ids=a + b, loss_mask=[0] * len(a) + [1] * len(b), old_logprobs=[0.0] * (len(a) + len(b)))
           for a, b in rows]
    return {**collate(eps, 0, "cpu"), "gids": torch.tensor(gids)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", help="HF model directory (default: a random-init tiny Qwen2, the demo's shape)")
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--group", type=int, default=16)
    p.add_argument("--prompt-len", type=int, default=42)
    p.add_argument("--completion-len", type=int, default=34)
    p.add_argument("--micro-batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--duplicates", type=float, default=0.0, help="fraction of each group's completions that copy an earlier one")
    p.add_argument("--json", help="also write the result here")
    p.add_argument("--tolerance", type=float, default=1e-3, help="largest logprob difference that counts as agreeing")
    args = p.parse_args()
    for k in ("prompts", "group", "completion_len", "micro_batch", "repeats"):
        if getattr(args, k) < 1:
            p.error(f"--{k.replace('_', '-')} must be >= 1, got {getattr(args, k)}")
    if not 0.0 <= args.duplicates < 1.0:
        p.error(f"--duplicates must be in [0, 1), got {args.duplicates}")
    if args.prompt_len < 2:
        p.error(f"--prompt-len must be >= 2, got {args.prompt_len}")
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    if args.model and not (Path(args.model) / "config.json").is_file():
        p.error(f"--model {args.model}: not an HF model directory (no config.json)")
    tmp = None if args.model else tempfile.mkdtemp(prefix="bench-shared-prefix-")
    try:
        ok = bench(args, tmp)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    if not ok:
        sys.exit(f"logprobs differ by more than --tolerance {args.tolerance:g}: the shared-prefix forward is wrong")


def bench(args: argparse.Namespace, tmp: str | None) -> bool:
    import torch
    from transformers import AutoModelForCausalLM

    from thinkgym.grpo.forward import distinct_rows, policy_forward, prefix_lengths, take

    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = args.model
    if model_dir is None:
        from thinkgym.sft_coldstart.tiny import TinyConfig, build_tiny_model

        model_dir = str(build_tiny_model(Path(tmp) / "tiny", TinyConfig(seed=args.seed)))
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.train()
    full = make_batch(args, min(model.config.vocab_size, 30000))
    n = len(full["gids"])
    chunks = [torch.arange(i, min(i + args.micro_batch, n)) for i in range(0, n, args.micro_batch)]

    # variant -> (share each group's prompt, run identical rows once)
    variants = {"plain": (False, False), "shared": (True, True)}
    if args.duplicates:
        variants["shared_unmerged"] = (True, False)

    def step(variant: str) -> tuple[float, torch.Tensor]:
        shared, merge = variants[variant]
        model.zero_grad(set_to_none=True)
        out = torch.zeros(n, full["mask"].shape[1])
        t0 = time.perf_counter()
        for idx in chunks:
            b, t = take(full, idx)
            if not shared:
                b = {k: v for k, v in b.items() if k != "gids"}
            lp, ent = policy_forward(model, b, 1.0, entropy="metric", merge_identical=merge)
            (-(lp * b["mask"]).sum() / full["mask"].sum()).backward()
            out[idx, :t] = lp.detach()
        return time.perf_counter() - t0, out

    times: dict[str, list[float]] = {v: [] for v in variants}
    lps = {}
    for r in range(args.repeats + 1):  # the first round warms up
        for v in variants:
            dt, lps[v] = step(v)
            if r:
                times[v].append(dt)
    m = full["mask"] > 0
    max_diff = max(float((lps[v] - lps["plain"])[m].abs().max()) for v in variants)
    tokens_plain = int(full["attention_mask"].sum())
    tokens_shared = tokens_merged = 0
    for idx in chunks:
        b, _ = take(full, idx)
        _, gid = torch.unique(b["gids"], return_inverse=True)
        pre = prefix_lengths(b["input_ids"], b["attention_mask"], b["mask"], gid)
        suffix = b["attention_mask"].sum(1) - pre[gid]  # (n,)
        rows = distinct_rows(b)
        tokens_shared += int(pre.sum()) + int(suffix.sum())
        tokens_merged += int(pre.sum()) + int((suffix if rows is None else suffix[rows[0]]).sum())
    res = {"rows": n, "prompts": args.prompts, "group": args.group, "prompt_len": args.prompt_len,
           "completion_len": args.completion_len, "duplicates": args.duplicates, "micro_batch": args.micro_batch,
           "threads": torch.get_num_threads(), "plain_s": statistics.median(times["plain"]),
           "shared_s": statistics.median(times["shared"]), "tokens_plain": tokens_plain,
           "tokens_shared": tokens_merged, "max_logprob_diff": max_diff, "date": time.strftime("%Y-%m-%d", time.gmtime())}
    res["speedup"] = res["plain_s"] / res["shared_s"]
    extra = ""
    if "shared_unmerged" in times:
        res.update(shared_unmerged_s=statistics.median(times["shared_unmerged"]), tokens_shared_unmerged=tokens_shared)
        res["merge_speedup"] = res["shared_unmerged_s"] / res["shared_s"]
        extra = (f"; with copies run: {res['shared_unmerged_s']:.3f}s, {tokens_shared} tokens "
                 f"-> merging identical rows {res['merge_speedup']:.2f}x")
    print(json.dumps(res, indent=1))
    print(f"learner forward+backward, {n} rows: plain {res['plain_s']:.3f}s, shared prefix {res['shared_s']:.3f}s "
          f"-> plain / shared {res['speedup']:.2f}x ({tokens_plain} -> {tokens_merged} tokens; logprobs agree to "
          f"{max_diff:.1e}){extra}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=1))
    return max_diff <= args.tolerance


if __name__ == "__main__":
    main()
