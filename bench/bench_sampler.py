"""Rollout throughput: vLLM in-process vs vLLM multiprocess vs thinkgym's HF sampler vs plain
``transformers`` ``generate`` (the path TRL's CPU trainer samples with), same model and shapes.

Each backend runs in its own subprocess (vLLM changes process-wide thread settings), with one
warm-up call, then ``--repeats`` timed ``generate`` calls of ``--prompts`` x ``--n`` samples of
``--max-tokens`` tokens. Prints sampled tokens/s and the ratio to ``transformers`` ``generate`` measured in the same run.

    python bench/bench_sampler.py                      # tiny random model, built on the fly
    python bench/bench_sampler.py --model DIR --prompts 64 --n 8 --max-tokens 256
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

BACKENDS = {
    "vllm-inproc": ("vllm", {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}),
    "vllm-multiproc": ("vllm", {"VLLM_ENABLE_V1_MULTIPROCESSING": "1"}),
    "hf": ("hf", {}),
    "transformers-generate": ("transformers", {}),
}


def transformers_generate(model, tok, prompts: list[list[int]], n: int, max_tokens: int, seed: int) -> int:
    """The peer: ``model.generate`` on left-padded prompts, n samples each; -> tokens sampled."""
    import torch

    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    attn = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=attn, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                             max_new_tokens=max_tokens, num_return_sequences=n, pad_token_id=pad)
    new = out[:, width:]
    done = (new == tok.eos_token_id).cumsum(1)  # (rows, T) eos seen so far
    return int(((done == 0) | ((done == 1) & (new == tok.eos_token_id))).sum())  # up to and including eos


def worker(args: argparse.Namespace) -> None:
    from thinkgym.sampler.types import chat_prompt_ids

    backend = BACKENDS[args.worker][0]
    t0 = time.perf_counter()
    if backend == "transformers":
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if args.threads:
            torch.set_num_threads(args.threads)
        tok = AutoTokenizer.from_pretrained(args.model)
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()

        def sample(prompts: list[list[int]], n: int, max_tokens: int, seed: int) -> int:
            return transformers_generate(model, tok, prompts, n, max_tokens, seed)

        close = None
    else:
        from thinkgym.sampler import SamplingConfig, make_sampler

        kw: dict = {"max_model_len": 2048} if backend == "vllm" else {}
        if args.threads:
            kw["num_threads"] = args.threads
        s = make_sampler(backend, args.model, **kw)
        tok, close = s.tokenizer, s.close

        def sample(prompts: list[list[int]], n: int, max_tokens: int, seed: int) -> int:
            out = s.generate(prompts, SamplingConfig(n=n, max_tokens=max_tokens, seed=seed))
            return sum(c.num_sampled for g in out for c in g)

    startup = time.perf_counter() - t0
    prompts = [
        chat_prompt_ids(tok, [{"role": "user", "content": f"Problem {i}: what is {i} + {2 * i + 1}? Think first."}])
        for i in range(args.prompts)
    ]
    t0 = time.perf_counter()
    sample(prompts[:2], 1, 8, 0)
    warmup = time.perf_counter() - t0
    times, tokens = [], []
    for r in range(args.repeats):
        t0 = time.perf_counter()
        tokens.append(sample(prompts, args.n, args.max_tokens, r))
        times.append(time.perf_counter() - t0)
    if close is not None:
        close()
    import torch

    print(json.dumps({
        "backend": args.worker, "startup_s": startup, "warmup_s": warmup, "times": times, "tokens": tokens,
        "tok_per_s": sum(tokens) / sum(times), "torch_threads": torch.get_num_threads(),
    }))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="HF model dir (default: build the tiny random model)")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads per backend (0 = leave the default)")
    ap.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated subset of " + ",".join(BACKENDS))
    ap.add_argument("--worker", choices=list(BACKENDS), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    for k in ("prompts", "n", "max_tokens", "repeats"):
        if getattr(args, k) < 1:
            ap.error(f"--{k.replace('_', '-')} must be >= 1, got {getattr(args, k)}")
    if args.threads < 0:
        ap.error(f"--threads must be >= 0, got {args.threads}")
    names = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in names if b not in BACKENDS]
    if unknown or not names:
        ap.error(f"--backends: unknown {unknown or args.backends!r}; choose from {','.join(BACKENDS)}")
    if args.model and not os.path.isfile(os.path.join(args.model, "config.json")):
        ap.error(f"--model {args.model}: not an HF model directory (no config.json)")

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from thinkgym.sft_coldstart.tiny import build_tiny_model

            model = str(build_tiny_model(os.path.join(tmp, "tiny")))
        results, failed = {}, []
        for name in names:
            env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
                   "TOKENIZERS_PARALLELISM": "false", **BACKENDS[name][1]}
            if args.threads:
                # Also reaches the multiprocess engine's worker process.
                env["OMP_NUM_THREADS"] = str(args.threads)
            cmd = [sys.executable, __file__, "--worker", name, "--model", model, "--prompts", str(args.prompts),
                   "--n", str(args.n), "--max-tokens", str(args.max_tokens), "--repeats", str(args.repeats), "--threads", str(args.threads)]
            p = subprocess.run(cmd, env=env, capture_output=True, text=True)
            line = next((ln for ln in reversed(p.stdout.splitlines()) if ln.startswith("{")), None)
            if p.returncode != 0 or line is None:
                print(f"{name}: failed (exit {p.returncode})\n{p.stderr[-2000:]}", file=sys.stderr)
                failed.append(name)
                continue
            results[name] = json.loads(line)
    print(f"\nrollout throughput: {args.prompts} prompts x n={args.n}, max_tokens={args.max_tokens}, "
          f"{args.repeats} timed calls, threads={args.threads or 'default'}, cpu_count={os.cpu_count()}")
    print(f"{'backend':22s} {'tok/s':>9s} {'vs peer':>7s} {'startup s':>10s} {'warmup s':>9s} {'call s':>8s} {'threads':>8s}")
    base = results.get("transformers-generate", {}).get("tok_per_s")
    for name, r in results.items():
        ratio = f"{r['tok_per_s'] / base:6.2f}x" if base else "   -"
        print(f"{name:22s} {r['tok_per_s']:9.1f} {ratio:>7s} {r['startup_s']:10.1f} {r['warmup_s']:9.2f} "
              f"{sum(r['times']) / len(r['times']):8.2f} {r['torch_threads']:8d}")
    if base:
        print("(vs peer = tok/s / transformers-generate tok/s, same run)")
    else:
        print("(no ratio: the peer, transformers-generate, was not run or failed)")
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)} (output above)")


if __name__ == "__main__":
    main()
