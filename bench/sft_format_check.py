"""Format rate and accuracy of an SFT checkpoint on held-out task items (greedy, vLLM).

    python bench/sft_format_check.py --run runs/sft-tiny [--checkpoint best] [--n 200]

Held-out items come from the run's task source with a different task seed; any item whose
question or underlying expression also occurs in the training items is removed before scoring. The prompt
(system turn + question) is rendered exactly as in training, from the run's config.yaml. The run
must have trained on a task source (``tasks:``; its first task is checked): a run on chat files
only (``datasets:``, as the demo's SFT) has no task to draw held-out items from. As in thinkgym's
rollouts, a chat template that opens ``<think>`` in the prompt has ``<think>`` put back in front
of the completion before grading.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="SFT run directory (holds config.yaml and final/ or best/)")
    ap.add_argument("--checkpoint", default="best", help="best or final (or a path)")
    ap.add_argument("--n", type=int, default=200, help="held-out items")
    ap.add_argument("--heldout-seed", type=int, default=10_000, help="task seed of the held-out items")
    ap.add_argument("--max-tokens", type=int, default=256)
    args = ap.parse_args()
    for k in ("n", "max_tokens"):
        if getattr(args, k) < 1:
            ap.error(f"--{k.replace('_', '-')} must be >= 1, got {getattr(args, k)}")
    run = Path(args.run)
    if not (run / "config.yaml").is_file():
        ap.error(f"--run {run}: no config.yaml (not an SFT run directory)")
    ckpt = Path(args.checkpoint) if Path(args.checkpoint).is_dir() else run / args.checkpoint
    if not (ckpt / "config.json").is_file():
        ap.error(f"--checkpoint {args.checkpoint}: {ckpt} is not an HF checkpoint (no config.json)")

    import yaml
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams

    from thinkgym.sft_coldstart.data import item_conversation
    from thinkgym.tasks import make_task
    from thinkgym.verifiers import grade
    from thinkgym.verifiers.extract import THINK_OPEN, assistant_turn

    cfg = yaml.safe_load((run / "config.yaml").read_text())
    if not cfg.get("tasks"):
        ap.error(f"--run {run}: trained on no task source (config.yaml has no tasks; datasets: {cfg.get('datasets')}), "
                 "so there are no held-out task items to draw")
    task = cfg["tasks"][0]
    params = (cfg.get("task_params") or {}).get(task, {})
    train_src = make_task(task, seed=cfg["task_seed"], **params)
    n_train = cfg["eval_examples"] + cfg["train_examples"]
    if cfg.get("pretrain_steps"):  # the pretraining text comes from the items after the SFT ones
        n_train += cfg.get("pretrain_examples", 0)
    # An item counts as seen if its question, or its underlying expression/problem (metadata
    # "expression", when the source records one), occurs among the training items.
    def keys(it):
        return {it["question"], repr(it["metadata"].get("expression", it["question"]))}

    seen = set().union(*(keys(train_src[i]) for i in range(n_train)))
    src = make_task(task, seed=args.heldout_seed, **params)
    items, i = [], 0
    scan = 20 * args.n + 10_000  # a small task space can run out of unseen items
    while len(items) < args.n:
        if i >= min(scan, len(src) if hasattr(src, "__len__") else scan):
            raise SystemExit(f"only {len(items)} of {i} {task} items (seed {args.heldout_seed}) are unseen in training; "
                             f"ask for fewer (--n)")
        it = src[i]
        i += 1
        if not keys(it) & seen:
            items.append(it)
    tok = AutoTokenizer.from_pretrained(ckpt)
    prompts = [
        tok.apply_chat_template(item_conversation(it["question"], "", cfg["system_prompt"])[:-1], tokenize=False,
                                add_generation_prompt=True)
        for it in items
    ]
    max_pos = json.loads((ckpt / "config.json").read_text()).get("max_position_embeddings") or 1024
    t0 = time.perf_counter()
    llm = LLM(str(ckpt), dtype="float32", max_model_len=min(1024, max_pos), seed=0, enforce_eager=True)
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=args.max_tokens))
    gen_s = time.perf_counter() - t0
    fmt, acc, lens, examples = [], [], [], []
    for it, prompt, o in zip(items, prompts, outs):
        text = o.outputs[0].text
        text = assistant_turn(text, prompt.rstrip().endswith(THINK_OPEN))  # as thinkgym's rollouts grade it
        f = grade("format", text, None).score == 1.0
        a = grade(it["metadata"].get("grader", "math"), text, it["answer"]).score == 1.0
        fmt.append(f)
        acc.append(a)
        lens.append(len(o.outputs[0].token_ids))
        if len(examples) < 3:
            examples.append({"question": it["question"], "completion": text, "gold": it["answer"], "correct": a})
    summary = {
        "checkpoint": str(ckpt), "task": task, "params": params, "heldout_items": len(items),
        "removed_overlap": i - len(items), "format_rate": sum(fmt) / len(fmt), "accuracy": sum(acc) / len(acc),
        "mean_completion_tokens": statistics.mean(lens), "generate_s": round(gen_s, 1), "examples": examples,
    }
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
