"""Format rate and accuracy of an SFT checkpoint on held-out task items (greedy, vLLM).

    python bench/sft_format_check.py --run runs/sft-tiny [--checkpoint best] [--n 200]

Held-out items come from the run's task source with a different task seed; any item whose
question or underlying expression also occurs in the training items is removed before scoring. The prompt
(system turn + question) is rendered exactly as in training, from the run's config.yaml.
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

    import yaml
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams

    from thinkgym.sft_coldstart.data import item_conversation
    from thinkgym.tasks import make_task
    from thinkgym.verifiers import grade

    run = Path(args.run)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    ckpt = Path(args.checkpoint) if Path(args.checkpoint).is_dir() else run / args.checkpoint
    (task,) = cfg["tasks"][:1]
    params = cfg.get("task_params", {}).get(task, {})
    train_src = make_task(task, seed=cfg["task_seed"], **params)
    n_train = cfg["eval_examples"] + cfg["train_examples"]
    # An item counts as seen if its question, or its underlying expression/problem (metadata
    # "expression", when the source records one), occurs among the training items.
    def keys(it):
        return {it["question"], repr(it["metadata"].get("expression", it["question"]))}

    seen = set().union(*(keys(train_src[i]) for i in range(n_train)))
    src = make_task(task, seed=args.heldout_seed, **params)
    items, i = [], 0
    while len(items) < args.n:
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
    t0 = time.perf_counter()
    llm = LLM(str(ckpt), dtype="float32", max_model_len=1024, seed=0, enforce_eager=True)
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=args.max_tokens))
    gen_s = time.perf_counter() - t0
    fmt, acc, lens, examples = [], [], [], []
    for it, o in zip(items, outs):
        text = o.outputs[0].text
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
