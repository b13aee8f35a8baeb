"""Learner throughput: GRPO loss forward/backward/optimizer step through DeepSpeed.

Prints learner tokens/s, the achieved FLOP/s (6 x matmul params x tokens + attention) and its
ratio to this machine's measured matmul peak (same run, same dtype), plus the ratio to a plain
PyTorch loop (no DeepSpeed) on the same model and batch, so DeepSpeed's overhead is visible.
No vLLM, no download: the model is a random-init Qwen2 built from a config here.

    python bench/bench_learner.py                                   # CPU, fp32, tiny + small
    python bench/bench_learner.py --device cuda --dtype bf16 --model-size 0.5b --seq-len 1024
"""

from __future__ import annotations

import argparse
import json
import os
import time

SIZES = {
    # name: (hidden, intermediate, layers, heads, kv_heads, vocab)
    "tiny": (128, 384, 4, 4, 2, 512),  # the test model's shape
    "small": (512, 1536, 8, 8, 2, 8192),
    "0.5b": (896, 4864, 24, 14, 2, 151936),  # Qwen2.5-0.5B shape
    "1.5b": (1536, 8960, 28, 12, 2, 151936),  # Qwen2.5-1.5B shape
}


def matmul_peak(device, dtype, n: int, secs: float = 2.0) -> float:
    """Best-of-runs FLOP/s of a square matmul: the peer that MFU is measured against."""
    import torch

    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    best, t_end = 0.0, time.perf_counter() + secs
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        for _ in range(4):
            a @ b
        sync(device)
        best = max(best, 4 * 2 * n**3 / (time.perf_counter() - t0))
    return best


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def build_model(size: str, dtype, seq_len: int):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    h, inter, layers, heads, kv, vocab = SIZES[size]
    cfg = Qwen2Config(vocab_size=vocab, hidden_size=h, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=max(seq_len, 2048),
                      tie_word_embeddings=size in ("tiny", "0.5b", "1.5b"))
    torch.manual_seed(0)
    return Qwen2ForCausalLM(cfg).to(dtype), cfg


def flops_per_token(cfg, seq_len: int) -> float:
    """Training FLOPs per token: 6 x (non-embedding params + LM head) + causal attention."""
    h, L, V = cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size
    kv_dim = h // cfg.num_attention_heads * cfg.num_key_value_heads
    per_layer = h * h * 2 + h * kv_dim * 2 + 3 * h * cfg.intermediate_size  # q,o + k,v + MLP
    matmul_params = L * per_layer + V * h
    attn = 6 * L * h * seq_len  # QK^T and AV, causal half, x3 for fwd+bwd (= 12 L h T / 2)
    return 6 * matmul_params + attn


def grpo_step_loss(model, ids, adv, old_lp, mask):
    from thinkgym.grpo import core

    logits = model(input_ids=ids).logits[:, :-1].float()
    lp = core.token_logprobs(logits, ids[:, 1:])
    pg, _ = core.clipped_surrogate(lp, old_lp, adv, 0.2, 0.28)
    return core.aggregate(pg, mask, "token_mean")


def setup(args, size: str, use_ds: bool, device, dtype):
    """One learner (plain torch or DeepSpeed) on a fixed random batch; returns (step_fn, info)."""
    import torch

    model, cfg = build_model(size, dtype, args.seq_len)
    n_params = sum(p.numel() for p in model.parameters())  # before ZeRO-3 partitions them away
    model.to(device)
    if args.grad_ckpt:
        model.gradient_checkpointing_enable()
    B, T = args.micro_batch, args.seq_len
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, cfg.vocab_size, (B, T), generator=g).to(device)
    adv = torch.randn(B, 1, generator=g).to(device)
    mask = torch.ones(B, T - 1, device=device)
    old_lp = torch.full((B, T - 1), -6.0, device=device)
    if use_ds:
        import deepspeed

        from thinkgym.distributed import setup_distributed
        from thinkgym.grpo.engine import make_skippable_adamw

        setup_distributed()
        opt = make_skippable_adamw()(model.parameters(), lr=1e-6)
        ds = {"train_micro_batch_size_per_gpu": B, "gradient_accumulation_steps": 1, "gradient_clipping": 1.0,
              "zero_optimization": {"stage": args.zero_stage}, "bf16": {"enabled": args.dtype == "bf16"},
              "steps_per_print": 10**9, "zero_allow_untested_optimizer": True}
        engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=ds, dist_init_required=False)

        def step():
            loss = grpo_step_loss(engine, ids, adv, old_lp, mask)
            engine.backward(loss)
            engine.step()
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-6)

        def step():
            loss = grpo_step_loss(model, ids, adv, old_lp, mask)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    sync(device)
    info = {"size": size, "params": n_params,
            "engine": "deepspeed" if use_ds else "torch", "flop_per_token": flops_per_token(cfg, T)}
    return step, info


def time_steps(step, n: int, device) -> float:
    sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    sync(device)
    return (time.perf_counter() - t0) / n


def run_pair(args, size: str, device, dtype) -> list[dict]:
    """Plain torch vs DeepSpeed on the same model and batch, timed in alternating rounds (best
    round each), so load from other processes hits both alike."""
    learners = [setup(args, size, False, device, dtype), setup(args, size, True, device, dtype)]
    best = [float("inf")] * 2
    for _ in range(args.rounds):
        for i, (step, _) in enumerate(learners):
            best[i] = min(best[i], time_steps(step, args.steps, device))
    rows = []
    for (_, info), dt in zip(learners, best):
        tok_s = args.micro_batch * args.seq_len / dt
        rows.append({**info, "tokens_per_s": tok_s, "step_s": dt, "flop_s": tok_s * info["flop_per_token"]})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--model-size", nargs="+", default=None, choices=list(SIZES))
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--zero-stage", type=int, default=2)
    p.add_argument("--steps", type=int, default=3, help="steps per timed round")
    p.add_argument("--rounds", type=int, default=3, help="alternating timed rounds (best one counts)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--grad-ckpt", action="store_true")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    for k in ("micro_batch", "steps", "rounds"):
        if getattr(args, k) < 1:
            p.error(f"--{k.replace('_', '-')} must be >= 1, got {getattr(args, k)}")
    if args.warmup < 0:
        p.error(f"--warmup must be >= 0, got {args.warmup}")
    if args.seq_len < 2:
        p.error(f"--seq-len must be >= 2 (the loss needs a next token), got {args.seq_len}")
    if args.zero_stage not in (0, 1, 2, 3):
        p.error(f"--zero-stage must be 0, 1, 2 or 3, got {args.zero_stage}")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device (or a CPU-only torch build)")

    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    sizes = args.model_size or (["tiny", "small"] if args.device == "cpu" else ["0.5b"])
    n_peak = 1024 if args.device == "cpu" else 8192
    peak = matmul_peak(device, dtype, n_peak)
    print(f"device={args.device} dtype={args.dtype} threads={torch.get_num_threads()} "
          f"matmul peak={peak / 1e9:.1f} GFLOP/s  batch={args.micro_batch}x{args.seq_len} zero={args.zero_stage}")
    rows = []
    for size in sizes:
        plain, ds = run_pair(args, size, device, dtype)
        peak = max(peak, matmul_peak(device, dtype, n_peak))  # re-measured: the best of the run counts
        rows += [plain, ds]
        for r in (plain, ds):
            print(f"  {size:>5} {r['engine']:>9}: {r['params'] / 1e6:8.2f}M params  {r['tokens_per_s']:10.0f} tok/s  "
                  f"{r['step_s']:7.3f} s/step  {r['flop_s'] / 1e9:8.2f} GFLOP/s  MFU {r['flop_s'] / peak:6.1%}")
        print(f"  {size:>5} deepspeed / torch tokens/s = {ds['tokens_per_s'] / plain['tokens_per_s']:.2f}")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"device": args.device, "dtype": args.dtype, "micro_batch": args.micro_batch, "seq_len": args.seq_len,
                       "zero_stage": args.zero_stage, "grad_ckpt": args.grad_ckpt, "peak_flop_s": peak, "rows": rows,
                       "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None}, f, indent=1)


if __name__ == "__main__":
    main()
