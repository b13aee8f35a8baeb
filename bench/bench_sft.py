"""SFT throughput: thinkgym (DeepSpeed, packed) vs TRL ``SFTTrainer`` on the same tiny model and data.

    python bench/bench_sft.py [--examples 600] [--pack-length 1024] [--padded-batch 8] [--model DIR]

Both trainers run one epoch over the same chat conversations (assistant-only loss, same max
length, same tokens per optimizer step, AdamW, float32, one CPU process), in this process, one
after the other. Throughput is real (non-pad) tokens per second of training. Also reported:
thinkgym packed vs thinkgym padded. TRL is a benchmark-only dependency.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def conversations(n: int) -> list:
    from thinkgym.sft_coldstart.data import task_conversations
    from thinkgym.tasks import TASKS

    if "arithmetic" in TASKS.names():
        return task_conversations("arithmetic", 0, n, seed=0, params={"n_operands": [2, 3]})
    import random  # fallback data when task sources are not installed

    r = random.Random(0)
    out = []
    for _ in range(n):
        a, b, c = r.randint(0, 99), r.randint(0, 99), r.randint(0, 9)
        out.append([{"role": "user", "content": f"What is {a} + {b} * {c}?"},
                    {"role": "assistant", "content": f"<think>\n{b} * {c} = {b*c}\n{a} + {b*c} = {a+b*c}\n</think>\n<answer>{a+b*c}</answer>"}])
    return out


def run_thinkgym(model: Path, data: Path, out: Path, packing: bool, pack_length: int, mbs: int) -> dict:
    from thinkgym.sft_coldstart.train import SFTConfig, train

    cfg = SFTConfig(model=str(model), output_dir=str(out), datasets=[str(data)], eval_fraction=0.0, max_length=pack_length,
                    packing=packing, pack_length=pack_length, micro_batch_size=mbs, epochs=1.0, learning_rate=1e-3,
                    warmup_steps=0, eval_every=0, save_best=False, progress=False, tensorboard=False, plot=False)
    res = train(cfg)
    return {"tokens": res["tokens"], "seconds": res["seconds"], "tokens_per_s": res["tokens"] / res["seconds"],
            "steps": res["steps"], "final_loss": res["train_loss"][-1]}


def run_trl(model: Path, convs: list, out: Path, pack_length: int, n_tokens: int) -> dict:
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tok = AutoTokenizer.from_pretrained(model)
    m = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    ds = datasets.Dataset.from_list([{"messages": c} for c in convs])
    args = SFTConfig(
        output_dir=str(out), max_length=pack_length, packing=True, assistant_only_loss=True,
        per_device_train_batch_size=1, gradient_accumulation_steps=1, num_train_epochs=1, learning_rate=1e-3,
        lr_scheduler_type="cosine", warmup_steps=0, logging_steps=10, save_strategy="no", report_to=[],
        use_cpu=True, bf16=False, fp16=False, dataloader_num_workers=0, disable_tqdm=True, seed=0,
    )
    trainer = SFTTrainer(model=m, args=args, train_dataset=ds, processing_class=tok)
    t0 = time.perf_counter()
    trainer.train()
    dt = time.perf_counter() - t0
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"tokens": n_tokens, "seconds": dt, "tokens_per_s": n_tokens / dt, "steps": trainer.state.global_step,
            "final_loss": losses[-1] if losses else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=600)
    ap.add_argument("--pack-length", type=int, default=1024)
    ap.add_argument("--padded-batch", type=int, default=8, help="examples per padded micro-batch")
    ap.add_argument("--model", default=None, help="HF model dir (default: build the tiny model)")
    args = ap.parse_args()
    for k in ("examples", "pack_length", "padded_batch"):
        if getattr(args, k) < 1:
            ap.error(f"--{k.replace('_', '-')} must be >= 1, got {getattr(args, k)}")
    if args.model and not (Path(args.model) / "config.json").is_file():
        ap.error(f"--model {args.model}: not an HF model directory (no config.json)")
    if importlib.util.find_spec("trl") is None:  # the peer: checked before thinkgym's run, not after it
        ap.error("the peer, TRL, is not installed: pip install 'thinkgym[bench]' (or bash scripts/install.sh --dev)")

    tmp = Path(tempfile.mkdtemp(prefix="bench-sft-"))
    try:
        bench(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def bench(args: argparse.Namespace, tmp: Path) -> None:
    from thinkgym.sft_coldstart.data import build_examples
    from thinkgym.sft_coldstart.tiny import build_tiny_model, task_corpus

    convs = conversations(args.examples)
    try:
        corpus = task_corpus(["arithmetic"], 1000)
    except Exception:
        corpus = None
    model = Path(args.model) if args.model else build_tiny_model(tmp / "tiny", corpus=corpus)
    data = tmp / "data.jsonl"
    data.write_text("".join(json.dumps({"messages": c}) + "\n" for c in convs))
    from transformers import AutoTokenizer

    ex, _ = build_examples(AutoTokenizer.from_pretrained(model), convs, args.pack_length)
    n_tokens = sum(len(e["input_ids"]) for e in ex)
    print(f"{len(convs)} conversations, {n_tokens} tokens, pack_length {args.pack_length}, model {model}", file=sys.stderr)

    results = {
        "thinkgym_packed": run_thinkgym(model, data, tmp / "tg-packed", True, args.pack_length, 1),
        "trl_sfttrainer_packed": run_trl(model, convs, tmp / "trl", args.pack_length, n_tokens),
        "thinkgym_padded": run_thinkgym(model, data, tmp / "tg-padded", False, args.pack_length, args.padded_batch),
    }
    tg, trl, pad = (results[k]["tokens_per_s"] for k in ("thinkgym_packed", "trl_sfttrainer_packed", "thinkgym_padded"))
    results["ratio_thinkgym_vs_trl"] = tg / trl
    results["ratio_packed_vs_padded"] = tg / pad
    print(f"{'run':<24}{'tokens/s':>10}{'seconds':>10}{'steps':>7}{'final loss':>12}")
    for k in ("thinkgym_packed", "trl_sfttrainer_packed", "thinkgym_padded"):
        r = results[k]
        print(f"{k:<24}{r['tokens_per_s']:>10.0f}{r['seconds']:>10.1f}{r['steps']:>7}{r['final_loss'] or float('nan'):>12.4f}")
    print(f"thinkgym / TRL SFTTrainer: {results['ratio_thinkgym_vs_trl']:.2f}x   packed / padded: "
          f"{results['ratio_packed_vs_padded']:.2f}x")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
