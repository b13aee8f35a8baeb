"""GRPO side by side: thinkgym (vLLM sampler + DeepSpeed learner) vs TRL's GRPOTrainer (HF generate).

Both start from the same SFT checkpoint and train on the same countdown prompts, in the same
order, with the same reward (thinkgym's countdown grader), group size, prompts per step,
generation length, learning rate (constant), KL coefficient, clip range and number of steps,
in one run on one machine. Neither applies an importance-sampling correction between sampler and
learner (TRL's HF-generate path has none; thinkgym's fp32 demo setting turns TIS off). Prints
samples/s and wall-time ratios and the held-out greedy accuracy of both results (thinkgym's eval
harness on contamination-gated held-out items). ``--repeats N`` runs each trainer N times with
sampling seeds seed, seed+100, ...: a single run's accuracy moves by several points with the
sampling seed alone, so "no worse" is judged on the mean. ``--async-rollouts`` runs thinkgym with
the next batch sampled while the current one learns (one update off-policy, with truncated IS
weights against the lag); TRL's HF-generate path has no such mode, so that comparison is no longer
algorithm for algorithm, only settings for settings.

    python bench/bench_grpo_vs_trl.py --model runs/demo/sft/best --steps 30 --repeats 3
    python bench/bench_grpo_vs_trl.py              # builds a tiny SFT checkpoint first

TRL is a benchmark-only dependency (``pip install thinkgym[bench]``).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def countdown_reward(tokenizer):
    """TRL reward function: thinkgym's countdown grader on the decoded completion.

    TRL decodes completions with ``skip_special_tokens=True``, which drops the tokenizer's added
    ``<think>``/``<answer>`` tokens, so the completion ids are decoded here instead (the same
    text thinkgym's sampler hands to its envs)."""
    from thinkgym.verifiers import get_grader

    grader = get_grader("countdown")
    drop = {tokenizer.eos_token_id, tokenizer.pad_token_id}

    def reward(prompts, completions, completion_ids, answer, grader_kwargs, **_):
        out = []
        for ids, gold, kw in zip(completion_ids, answer, grader_kwargs):
            text = tokenizer.decode([t for t in ids if t not in drop], skip_special_tokens=False)
            g = grader(text, json.loads(gold), **json.loads(kw))
            out.append(0.0 if g.score is None else float(g.score))
        return out

    return reward


def run_trl(args, cfg, model: str, out: Path, seed: int) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from thinkgym.tasks import make_task

    torch.manual_seed(seed)
    src = make_task("countdown", seed=cfg.split_seed("rl"), **cfg.task_params)
    items = [src[i] for i in range(args.steps * args.prompts)]
    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": it["question"]}],
                             "answer": json.dumps(it["answer"]),
                             "grader_kwargs": json.dumps(it["metadata"].get("grader_kwargs", {}))} for it in items])
    tok = AutoTokenizer.from_pretrained(model)
    tcfg = GRPOConfig(
        output_dir=str(out), max_steps=args.steps, per_device_train_batch_size=args.prompts * args.group,
        num_generations=args.group, max_completion_length=args.max_tokens, temperature=1.0, top_k=0, top_p=1.0,
        learning_rate=args.lr, lr_scheduler_type="constant", adam_beta2=0.999, optim="adamw_torch",
        beta=args.kl, epsilon=0.2, epsilon_high=0.28, loss_type="dapo", scale_rewards="group",
        num_iterations=1, gradient_accumulation_steps=1, use_cpu=True, bf16=False, report_to="none",
        logging_steps=1, save_strategy="no", seed=seed, shuffle_dataset=False, disable_dropout=True,
    )
    policy = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    trainer = GRPOTrainer(model=policy, reward_funcs=countdown_reward(tok), args=tcfg, train_dataset=ds,
                          processing_class=tok)
    t0 = time.perf_counter()
    trainer.train()
    loop = time.perf_counter() - t0
    trainer.save_model(str(out / "final"))
    tok.save_pretrained(out / "final")
    logs = [r for r in trainer.state.log_history if "reward" in r]
    return {"loop_s": loop, "samples": args.steps * args.prompts * args.group, "final": out / "final",
            "reward_first": logs[0]["reward"] if logs else None, "reward_last": logs[-1]["reward"] if logs else None}


def thinkgym_grpo_config(args, cfg, model: str, out: Path, seed: int) -> dict:
    """The thinkgym learner's config: the demo's GRPO settings with this run's sizes."""
    from thinkgym.demo import grpo_config

    g = grpo_config(cfg, model, out)
    # Same prompts, same count as TRL: no dynamic-sampling refills; constant lr, no warm-up.
    g.update(dynamic_sampling=False, max_sampling_tries=1, max_steps=args.steps, prompts_per_step=args.prompts,
             group_size=args.group, max_tokens=args.max_tokens, lr=args.lr, kl_coef=args.kl, warmup_steps=0, min_lr_ratio=1.0,
             micro_batch_size=min(args.micro_batch, args.prompts * args.group), seed=seed)
    if args.async_rollouts:  # one update off-policy: the truncated IS weights correct for the lag
        g.update(async_rollouts=True, tis_cap=2.0)
    return g


def check_args(p: argparse.ArgumentParser, args) -> None:
    """Bad arguments fail here, before the data, the SFT checkpoint or either trainer is built."""
    from thinkgym.config import ConfigError, from_dict
    from thinkgym.demo import MAX_SEED, DemoConfig
    from thinkgym.grpo.train import GRPOConfig

    for k in ("steps", "prompts", "max_tokens", "micro_batch", "heldout", "repeats"):
        if getattr(args, k) < 1:
            p.error(f"--{k.replace('_', '-')} must be >= 1, got {getattr(args, k)}")
    if args.group < 2:
        p.error(f"--group must be >= 2 (a group's advantages need two samples), got {args.group}")
    if not 0 <= args.seed or args.seed + 100 * (args.repeats - 1) > MAX_SEED:
        p.error(f"--seed and the repeats' sampling seeds (seed + 100 * repeat) must be in [0, {MAX_SEED}]")
    if args.model is not None and not (Path(args.model) / "config.json").is_file():
        p.error(f"--model {args.model}: not an HF model directory (no config.json)")
    if importlib.util.find_spec("trl") is None:  # the peer: checked before the SFT checkpoint and thinkgym's run
        p.error("the peer, TRL, is not installed: pip install 'thinkgym[bench]' (or bash scripts/install.sh --dev)")
    try:  # the learner's own checks (micro-batch split, lr, KL, ...), with a stand-in model path
        cfg = DemoConfig(seed=args.seed, grpo_steps=args.steps, prompts_per_step=args.prompts, group_size=args.group,
                         max_tokens=args.max_tokens)
        from_dict(GRPOConfig, thinkgym_grpo_config(args, cfg, args.model or "sft", Path(args.output_dir) / "thinkgym",
                                                   args.seed), "thinkgym GRPO config")
    except ConfigError as e:
        p.error(f"{e} (from --steps/--prompts/--group/--max-tokens/--lr/--kl/--micro-batch)")


def run_thinkgym(args, cfg, model: str, out: Path, seed: int) -> dict:
    import subprocess

    from thinkgym.demo import _write_yaml
    from thinkgym.grpo.engine import latest_checkpoint
    from thinkgym.grpo.monitor import loop_seconds

    g = thinkgym_grpo_config(args, cfg, model, out, seed)
    out.mkdir(parents=True, exist_ok=True)
    yml = _write_yaml(out.parent / f"{out.name}-grpo.yaml", g)
    t0 = time.perf_counter()
    with open(out.parent / f"{out.name}-grpo.log", "w") as f:
        p = subprocess.run([sys.executable, "-m", "thinkgym.grpo.train", "--config", str(yml)], stdout=f,
                           stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0
    if p.returncode:
        raise SystemExit(f"thinkgym GRPO failed; see {out.parent / f'{out.name}-grpo.log'}")
    hist = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    loop = loop_seconds(hist)
    return {"loop_s": loop, "wall_s": wall, "samples": args.steps * args.prompts * args.group,
            "final": latest_checkpoint(out) / "hf", "reward_first": hist[0]["reward"], "reward_last": hist[-1]["reward"]}


def main() -> None:
    from thinkgym.demo import DemoConfig

    d = DemoConfig()  # the demo's GRPO settings are the defaults
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", help="SFT checkpoint to start from (default: build one with a short SFT)")
    p.add_argument("--output-dir", default="runs/bench-grpo-vs-trl")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--prompts", type=int, default=d.prompts_per_step, help="prompts per step")
    p.add_argument("--group", type=int, default=d.group_size, help="completions per prompt")
    p.add_argument("--max-tokens", type=int, default=d.max_tokens)
    p.add_argument("--lr", type=float, default=d.grpo_lr)
    p.add_argument("--kl", type=float, default=d.kl_coef)
    p.add_argument("--micro-batch", type=int, default=d.micro_batch_size)
    p.add_argument("--heldout", type=int, default=200)
    p.add_argument("--seed", type=int, default=0, help="data split seed (the SFT checkpoint's demo seed)")
    p.add_argument("--repeats", type=int, default=1,
                   help="runs of each trainer, sampling seeds seed, seed+100, ... (accuracy: mean and spread)")
    p.add_argument("--async-rollouts", action="store_true",
                   help="thinkgym samples the next batch while one learns (one update off-policy, TIS-corrected)")
    args = p.parse_args()
    check_args(p, args)

    from thinkgym.demo import _run, _write_yaml, build_data, evaluate_policies, sft_config
    from thinkgym.sft_coldstart.tiny import TinyConfig, build_tiny_model

    run = Path(args.output_dir)
    run.mkdir(parents=True, exist_ok=True)
    cfg = DemoConfig(output_dir=str(run), seed=args.seed, heldout=args.heldout, grpo_steps=args.steps,
                     prompts_per_step=args.prompts, group_size=args.group, max_sampling_tries=1,
                     max_tokens=args.max_tokens, eval_samples=4)
    data = build_data(cfg, run)  # held-out items gated against the SFT and RL prompts
    model = args.model
    if model is None:
        tiny = build_tiny_model(run / "tiny-init", TinyConfig(max_position_embeddings=256, seed=args.seed),
                                corpus=data["corpus"])
        yml = _write_yaml(run / "sft.yaml", sft_config(cfg, str(tiny), run / "sft", data["dir"], epochs=8.0))
        _run([sys.executable, "-m", "thinkgym.sft_coldstart.train", str(yml)], run / "sft.log", "sft")
        res = json.loads((run / "sft" / "result.json").read_text())
        model = res.get("best") or res["final"]
    print(f"start: {model}; {args.steps} steps x {args.prompts} prompts x {args.group} samples, "
          f"{args.max_tokens} tokens, lr {args.lr:g}, KL {args.kl:g}", flush=True)

    # Each repeat samples with its own seed (same checkpoint, prompts and settings): one 30-step run's
    # held-out accuracy moves by several points with the sampling seed alone.
    runs = []
    for r in range(args.repeats):
        seed, tag = args.seed + 100 * r, ("" if r == 0 else f"-{args.seed + 100 * r}")
        tg = run_thinkgym(args, cfg, model, run / f"thinkgym{tag}", seed)
        print(f"thinkgym (seed {seed}): {tg['samples'] / tg['loop_s']:.1f} samples/s (loop {tg['loop_s']:.1f}s, "
              f"wall {tg['wall_s']:.1f}s)", flush=True)
        t0 = time.perf_counter()
        trl = run_trl(args, cfg, model, run / f"trl{tag}", seed)
        trl["wall_s"] = time.perf_counter() - t0
        print(f"TRL      (seed {seed}): {trl['samples'] / trl['loop_s']:.1f} samples/s (loop {trl['loop_s']:.1f}s, "
              f"wall {trl['wall_s']:.1f}s)", flush=True)
        runs.append({"seed": seed, "tag": tag, "thinkgym": tg, "trl": trl})

    policies = {"start": Path(model)}
    for x in runs:
        policies.update({f"thinkgym{x['tag']}": Path(x["thinkgym"]["final"]), f"trl{x['tag']}": Path(x["trl"]["final"])})
    acc = evaluate_policies(dataclasses.replace(cfg, eval_samples=4), policies, run)
    per_run = []
    for x in runs:
        tg, trl, tag = x["thinkgym"], x["trl"], x["tag"]
        per_run.append({
            "sampling_seed": x["seed"],
            "thinkgym_samples_per_s": tg["samples"] / tg["loop_s"], "trl_samples_per_s": trl["samples"] / trl["loop_s"],
            "samples_per_s_ratio": (tg["samples"] / tg["loop_s"]) / (trl["samples"] / trl["loop_s"]),
            "thinkgym_wall_s": tg["wall_s"], "trl_wall_s": trl["wall_s"],
            "heldout_accuracy": {"thinkgym": acc[f"thinkgym{tag}"]["accuracy"], "trl": acc[f"trl{tag}"]["accuracy"]},
            "heldout_pass@1_T1": {"thinkgym": acc[f"thinkgym{tag}"]["pass@1"], "trl": acc[f"trl{tag}"]["pass@1"]},
            "train_reward": {"thinkgym": [tg["reward_first"], tg["reward_last"]], "trl": [trl["reward_first"], trl["reward_last"]]},
        })

    def mean(xs: list[float]) -> float:
        return sum(xs) / len(xs)

    samples = sum(x["thinkgym"]["samples"] for x in runs)
    tg_sps = samples / sum(x["thinkgym"]["loop_s"] for x in runs)
    trl_sps = samples / sum(x["trl"]["loop_s"] for x in runs)
    res = {
        "model": str(model), "seed": args.seed, "repeats": args.repeats, "thinkgym_async_rollouts": args.async_rollouts,
        "steps": args.steps, "samples_per_step": args.prompts * args.group, "max_tokens": args.max_tokens,
        "thinkgym_samples_per_s": tg_sps, "trl_samples_per_s": trl_sps, "samples_per_s_ratio": tg_sps / trl_sps,
        "wall_time_ratio_trl_over_thinkgym": sum(x["trl"]["wall_s"] for x in runs) / sum(x["thinkgym"]["wall_s"] for x in runs),
        "thinkgym_wall_s": mean([x["thinkgym"]["wall_s"] for x in runs]), "trl_wall_s": mean([x["trl"]["wall_s"] for x in runs]),
        # means over the repeats (one run each with --repeats 1); per-run values under "runs"
        "heldout_accuracy": {"start": acc["start"]["accuracy"],
                             **{k: mean([r["heldout_accuracy"][k] for r in per_run]) for k in ("thinkgym", "trl")}},
        "heldout_pass@1_T1": {"start": acc["start"]["pass@1"],
                              **{k: mean([r["heldout_pass@1_T1"][k] for r in per_run]) for k in ("thinkgym", "trl")}},
        "runs": per_run,
        "heldout_items": data["heldout_items"], "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    (run / "bench.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))
    spread = {k: [round(100 * r["heldout_accuracy"][k], 1) for r in per_run] for k in ("thinkgym", "trl")}
    print(f"samples/s ratio thinkgym/TRL: {res['samples_per_s_ratio']:.2f}x   wall time TRL/thinkgym: "
          f"{res['wall_time_ratio_trl_over_thinkgym']:.2f}x   held-out greedy accuracy: start "
          f"{acc['start']['accuracy']:.3f}, thinkgym {res['heldout_accuracy']['thinkgym']:.3f} {spread['thinkgym']}, "
          f"TRL {res['heldout_accuracy']['trl']:.3f} {spread['trl']}")


if __name__ == "__main__":
    main()
