"""Cold-start SFT on DeepSpeed, one file top to bottom.

    thinkgym sft --config examples/sft-tiny-cpu.yaml                  # one process (CPU: gloo)
    deepspeed --num_gpus 8 -m thinkgym.sft_coldstart.train examples/sft-gpu-qwen.yaml
    torchrun --nproc_per_node 2 -m thinkgym.sft_coldstart.train examples/sft-tiny-cpu.yaml

Data: task sources' worked solutions and/or chat datasets, rendered with the model's chat
template, loss on assistant tokens only, packed into rows with per-example position ids
(see packing.py). Optimizer: torch AdamW inside a DeepSpeed engine (ZeRO stage from the
config), cosine schedule with warm-up. Every ``save_every`` steps a DeepSpeed checkpoint
(model, optimizer, scheduler, RNG, data cursor) allows an exact resume; every ``eval_every``
steps the held-out loss (and, with ``eval_env``, the greedy accuracy on that env's items) is
measured and the best model (``best_metric``) is saved as an HF checkpoint. At the
end the final HF checkpoint (safetensors + tokenizer + chat template, LoRA merged), TensorBoard
logs, ``metrics.jsonl`` and ``loss.png`` are written under ``output_dir``. ``max_train_s`` ends
a run on a training-time budget instead of a step count (an equal-time baseline), ``max_time_s``
stops one for a later resume.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import re
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from thinkgym.config import ConfigError, check_fresh_run, check_output_dir, clear_earlier_run
from thinkgym.sft_coldstart.data import DEFAULT_SYSTEM_PROMPT


@dataclass
class SFTConfig:
    """Everything one SFT run needs. Load from YAML with ``load_config(SFTConfig, path)``."""

    # --- model
    model: str = "tiny"  #: HF model directory (or a name in the local HF cache); "tiny" builds the tiny model kit
    output_dir: str = "runs/sft"  #: run directory: final/, best/, checkpoints/, tb/, metrics.jsonl, loss.png
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  #: training precision (float32 on CPU)
    attn_implementation: str = "sdpa"  #: "sdpa", "eager" or "flash_attention_2" (varlen packing on GPU)
    gradient_checkpointing: bool = False  #: trade compute for activation memory
    # --- data
    tasks: list[str] = field(default_factory=list)  #: task sources whose worked solutions are the traces
    task_params: dict = field(default_factory=dict)  #: per-task knobs: {task_name: {param: value}}
    task_seed: int = 0  #: seed of the task sources (use another seed for held-out accuracy evals)
    train_examples: int = 2000  #: traced items per task for training (indices after the eval block)
    eval_examples: int = 100  #: items per task held out for the eval loss (indices 0 .. eval_examples-1)
    datasets: list[str] = field(default_factory=list)  #: chat data: "file.jsonl" or "hf:NAME_OR_DIR[:SPLIT]"
    messages_field: str = "messages"  #: field of a dataset row holding the messages
    eval_fraction: float = 0.05  #: share of dataset rows held out for the eval loss (every k-th row, offset by seed)
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT  #: system turn of task conversations (None: no system turn)
    # The jsonl / hf_dataset tasks make a `solution` column the worked solution (MATH's is prose with no think
    # block); false trains on task solutions as they are.
    require_solution_format: bool = True  #: task solutions must be <think>...</think> + \boxed{}/<answer> (else a DataError)
    max_length: int = 1024  #: max tokens per example
    overlong: Literal["drop", "truncate"] = "drop"  #: what to do with longer examples
    render_method: Literal["auto", "generation", "prefix"] = "auto"  #: assistant mask: template markers or prefix rendering
    # --- batching
    packing: bool = True  #: pack examples into rows (per-example positions, no cross-attention)
    pack_length: int = 2048  #: tokens per packed row (>= max_length)
    micro_batch_size: int = 1  #: rows per micro-batch per process (packed rows, or examples if not packing)
    gradient_accumulation_steps: int = 1  #: micro-batches per optimizer step
    # --- optimization
    max_steps: int = 0  #: optimizer steps; 0 = derive from epochs
    epochs: float = 1.0  #: passes over the training data when max_steps is 0
    learning_rate: float = 1e-4  #: peak learning rate
    min_lr_ratio: float = 0.1  #: cosine decays to learning_rate * min_lr_ratio
    warmup_steps: int = 0  #: linear warm-up steps (overrides warmup_ratio when > 0)
    warmup_ratio: float = 0.03  #: warm-up as a share of max_steps
    weight_decay: float = 0.0  #: AdamW weight decay
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.95])  #: AdamW betas
    adam_eps: float = 1e-8  #: AdamW epsilon
    max_grad_norm: float = 1.0  #: gradient clipping (0 = off)
    zero_stage: int = 2  #: DeepSpeed ZeRO stage 0-3
    # --- what trains
    freeze_embeddings: bool = False  #: freeze input embeddings (and lm_head when tied)
    freeze_lm_head: bool = False  #: freeze the output projection
    lora_r: int = 0  #: LoRA rank; 0 = full fine-tuning
    lora_alpha: int = 16  #: LoRA scaling numerator
    lora_dropout: float = 0.0  #: LoRA dropout
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )  #: module names LoRA wraps
    # --- optional next-token pretraining on generated task text before SFT
    pretrain_steps: int = 0  #: 0 = off; else steps of plain next-token training (all tokens) first
    pretrain_examples: int = 4000  #: task items per task for pretraining text (indices after the SFT ones)
    pretrain_learning_rate: float = 1e-3  #: peak learning rate of the pretraining stage
    # --- eval, checkpoints, logging
    eval_every: int = 50  #: steps between eval-loss measurements (0 = only at the end)
    save_every: int = 0  #: steps between resumable DeepSpeed checkpoints (0 = none, except on early stop)
    keep_checkpoints: int = 2  #: resumable checkpoints kept on disk
    save_best: bool = True  #: keep the best model (see best_metric) as an HF checkpoint in best/
    best_metric: Literal["loss", "accuracy"] = "loss"  #: what picks best/: lowest dev loss, or highest dev accuracy (needs eval_env)
    eval_env: str = ""  #: env id whose items are answered greedily and graded at every eval ("" = no accuracy eval)
    eval_env_kwargs: dict = field(default_factory=dict)  #: kwargs for gymnasium.make(eval_env), e.g. task_params, seed
    eval_env_items: int = 200  #: dev items 0 .. eval_env_items-1 of eval_env (keep them out of the training data)
    eval_max_tokens: int = 256  #: generation budget per dev answer
    eval_threads: int = 1  #: torch CPU threads while answering dev items (0 = unchanged); see dev_accuracy
    resume: bool = False  #: continue from the latest checkpoint in output_dir/checkpoints
    overwrite: bool = False  #: a fresh run replaces an earlier run's checkpoints, best/ and final/ in output_dir (else an error)
    stop_after_steps: int = 0  #: stop (and checkpoint) after this many steps without changing the schedule
    max_time_s: float = 0.0  #: stop (and checkpoint) after this many seconds of training (0 = no limit)
    max_train_s: float = 0.0  #: finish (final/ is written) once optimizer steps, evals excluded, took this long (0 = no budget)
    seed: int = 0  #: seed of data order, LoRA init and dropout
    progress: bool = True  #: rich progress bar
    tensorboard: bool = True  #: write TensorBoard logs to output_dir/tb
    plot: bool = True  #: write output_dir/loss.png at the end
    stage: Literal["sft", "pretrain"] = "sft"  #: "pretrain" trains every token of plain task text

    def validate(self) -> None:
        """Checks on the values alone (no filesystem, no registries); see :func:`check_config`."""
        for name, lo in _INT_MIN.items():
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool):
                raise ValueError(f"{name} must be an integer, got {v!r}")
            if lo is not None and v < lo:
                raise ValueError(f"{name} must be >= {lo}, got {v}{_ZERO_MEANS.get(name, '')}")
        for name, (lo, hi, lo_open, hi_open) in _FLOAT_RANGE.items():
            v = getattr(self, name)
            # NaN fails every comparison, so a plain `v <= 0` would let it through.
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number, got {v!r}")
            if v < lo or (lo_open and v == lo) or (hi is not None and (v > hi or (hi_open and v == hi))):
                rule = (f"{'>' if lo_open else '>='} {lo}" if hi is None
                        else f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}")
                raise ValueError(f"{name} must be {rule}, got {v}{_RANGE_WHY.get(name, '')}")
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {list(choices)}, got {getattr(self, name)!r}")
        attn = self.attn_implementation
        if not isinstance(attn, str) or (attn not in _ATTN_IMPLEMENTATIONS and not _HUB_KERNEL.fullmatch(attn)):
            raise ValueError(f"attn_implementation must be one of {sorted(_ATTN_IMPLEMENTATIONS)} "
                             f"(or a hub kernel repo, ORG/NAME), got {self.attn_implementation!r}")
        if not self.output_dir:
            raise ValueError("output_dir must not be empty")
        if not self.messages_field:
            raise ValueError("messages_field must not be empty")
        if not (isinstance(self.adam_betas, (list, tuple)) and len(self.adam_betas) == 2
                and all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in self.adam_betas)):
            raise ValueError(f"adam_betas must be two numbers in [0, 1) (beta1, beta2), got {self.adam_betas!r}")
        if not self.tasks and not self.datasets:
            raise ValueError("no data: set tasks and/or datasets")
        for key in ("tasks", "datasets"):
            for s in getattr(self, key):
                if not isinstance(s, str) or not s:
                    raise ValueError(f"{key} entries must be non-empty strings, got {s!r}")
        twice = sorted({t for t in self.tasks if self.tasks.count(t) > 1})
        if twice:
            # One task_params entry per name: a repeated name can only duplicate the same items.
            raise ValueError(f"tasks: {twice} listed more than once")
        self._validate_task_params()
        if self.packing and self.pack_length < self.max_length:
            raise ValueError(f"pack_length ({self.pack_length}) must be >= max_length ({self.max_length})")
        if self.lora_r and self.zero_stage == 3:
            raise ValueError("LoRA with ZeRO-3 is not supported (merging needs whole weights); use zero_stage 2")
        if self.lora_r and not self.lora_target_modules:
            raise ValueError("lora_target_modules must not be empty when lora_r > 0")
        if self.pretrain_steps and not self.pretrain_examples:
            raise ValueError("pretrain_examples must be >= 1 when pretrain_steps > 0 (the pretraining text)")
        if self.best_metric == "accuracy" and not self.eval_env:
            raise ValueError("best_metric 'accuracy' needs eval_env (the env whose items are graded)")
        if not isinstance(self.eval_env_kwargs, dict):
            raise ValueError(f"eval_env_kwargs must be a mapping, got {self.eval_env_kwargs!r}")
        if self.eval_env and self.zero_stage == 3:
            # Generation stops at different steps on different ranks; ZeRO-3's collective
            # weight gathers would then wait forever.
            raise ValueError("eval_env (greedy dev accuracy) is not supported with ZeRO-3; use zero_stage <= 2")

    def _validate_task_params(self) -> None:
        # Params of a task that is not trained on would be ignored without a word (a typo in
        # the task name trains on the defaults), so every key must name a configured task.
        if not isinstance(self.task_params, dict):
            raise ValueError(f"task_params must be a mapping {{task_name: {{param: value}}}}, got {self.task_params!r}")
        stray = [k for k in self.task_params if k not in self.tasks]
        if stray:
            import difflib

            hint = "; ".join(f"{k!r}" + (f" (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(str(k), self.tasks, 1)) else "")
                             for k in stray)
            raise ValueError(f"task_params: {hint} not in tasks {self.tasks}")
        for name, params in self.task_params.items():
            if not isinstance(params, dict):
                raise ValueError(f"task_params.{name} must be a mapping of parameter names to values, got {params!r}")


# Integer fields and their smallest value (None: any integer). Where 0 is allowed it means
# "off", "derive it" or "none".
_INT_MIN: dict[str, int | None] = {
    "task_seed": None, "seed": None, "train_examples": 0, "eval_examples": 0, "max_length": 1,
    "pack_length": 1, "micro_batch_size": 1, "gradient_accumulation_steps": 1, "max_steps": 0, "warmup_steps": 0,
    "zero_stage": 0, "lora_r": 0, "lora_alpha": 1, "pretrain_steps": 0, "pretrain_examples": 0, "eval_every": 0,
    "save_every": 0, "keep_checkpoints": 1, "eval_env_items": 1, "eval_max_tokens": 1, "eval_threads": 0,
    "stop_after_steps": 0,
}
_ZERO_MEANS = {
    "max_steps": " (0 = derive from epochs)", "warmup_steps": " (0 = use warmup_ratio)", "lora_r": " (0 = full fine-tuning)",
    "eval_every": " (0 = only at the end)", "save_every": " (0 = no periodic checkpoints)",
    "keep_checkpoints": " (checkpoints kept on disk; 0 would keep all of them)",
}
# Number fields: (low, high or None, low excluded, high excluded).
_FLOAT_RANGE = {
    "epochs": (0, None, True, False), "learning_rate": (0, None, True, False), "min_lr_ratio": (0, 1, False, False),
    "warmup_ratio": (0, 1, False, False), "weight_decay": (0, None, False, False), "adam_eps": (0, None, True, False),
    "max_grad_norm": (0, None, False, False), "lora_dropout": (0, 1, False, True),
    # split_holdout keeps every round(1/f)-th row (at least every 2nd), so 0.5 is the largest share.
    "eval_fraction": (0, 0.5, False, False),
    "pretrain_learning_rate": (0, None, True, False), "max_time_s": (0, None, False, False),
    "max_train_s": (0, None, False, False),
}
_RANGE_WHY = {
    "max_grad_norm": " (0 = no clipping)", "eval_fraction": " (every k-th dataset row is held out, k >= 2)",
    "max_time_s": " (0 = no limit)", "max_train_s": " (0 = no budget)",
}
# Literal fields, checked here too for configs built in code rather than loaded from YAML.
_CHOICES = {
    "dtype": ("float32", "bfloat16", "float16"), "overlong": ("drop", "truncate"),
    "render_method": ("auto", "generation", "prefix"), "best_metric": ("loss", "accuracy"), "stage": ("sft", "pretrain"),
    "zero_stage": (0, 1, 2, 3),
}
# transformers' built-in attention implementations that train; a hub kernel is named by its repo.
# ("paged|eager" is not one: it needs continuous batching's paged cache and refuses a plain forward.)
_ATTN_IMPLEMENTATIONS = frozenset({"eager", "sdpa", "flash_attention_2", "flash_attention_3", "flash_attention_4",
                                   "flex_attention"})
# Implementations that build a block-causal mask per row from packed position ids; the others
# (flash-attention kernels) separate packed examples only in a batch of one row.
_MASKED_ATTENTION = frozenset({"eager", "sdpa", "flex_attention"})
_HUB_KERNEL = re.compile(r"[^/:]+/[^/:]+(?:@[^/:]+)?(?::[^/:]+)?")


# ----------------------------------------------------------------------------- setup helpers


def _ensure_tiny(cfg: SFTConfig, out: Path) -> Path:
    """Build the tiny model (tokenizer trained on the configured tasks' text) once per run dir."""
    from thinkgym.sft_coldstart.tiny import build_tiny_model, task_corpus

    path = out / "tiny-init"
    if not (path / "config.json").exists():
        # Every rank may get here; each builds privately and the first rename wins.
        tmp = out / f"tiny-init.tmp{os.environ.get('RANK', '0')}"
        corpus = task_corpus(cfg.tasks, 2000, cfg.task_seed) if cfg.tasks else None
        try:
            build_tiny_model(tmp, corpus=corpus)
        except OSError as e:  # check_config tried output_dir; a disk that fills or a race can still refuse
            from thinkgym.config import output_dir_error

            raise ConfigError(output_dir_error(out, "output_dir", e)) from None
        try:
            tmp.rename(path)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def _build_data(cfg: SFTConfig, tok: Any) -> tuple[list, list, int, int]:
    """-> (train examples, eval examples, train rows dropped, eval rows dropped)."""
    from thinkgym.sft_coldstart import data as D

    train_convs, eval_convs, train_text, eval_text = [], [], [], []
    for name in cfg.tasks:
        params = cfg.task_params.get(name, {})
        if cfg.stage == "pretrain":
            start = cfg.eval_examples + cfg.train_examples
            train_text += list(D.iter_task_text(name, start, cfg.pretrain_examples, cfg.task_seed, params))
            eval_text += list(D.iter_task_text(name, 0, cfg.eval_examples, cfg.task_seed, params))
            continue
        eval_convs += D.task_conversations(name, 0, cfg.eval_examples, cfg.task_seed, params, cfg.system_prompt,
                                           cfg.require_solution_format)
        train_convs += D.task_conversations(name, cfg.eval_examples, cfg.train_examples, cfg.task_seed, params,
                                            cfg.system_prompt, cfg.require_solution_format)
    for spec in cfg.datasets:
        tr, ev = D.split_holdout(D.load_source(spec, cfg.messages_field), cfg.eval_fraction, cfg.seed)
        if cfg.stage == "pretrain":
            train_text += ["\n".join(m["content"] for m in c) for c in tr]
            eval_text += ["\n".join(m["content"] for m in c) for c in ev]
        else:
            train_convs, eval_convs = train_convs + tr, eval_convs + ev
    if cfg.stage == "pretrain":
        return ([D.pretrain_example(tok, t, cfg.max_length) for t in train_text],
                [D.pretrain_example(tok, t, cfg.max_length) for t in eval_text], 0, 0)
    train, dropped = D.build_examples(tok, train_convs, cfg.max_length, cfg.overlong, cfg.render_method)
    evals, eval_dropped = D.build_examples(tok, eval_convs, cfg.max_length, cfg.overlong, cfg.render_method)
    if not train:
        raise D.DataError(f"no training examples left (dropped {dropped}: longer than max_length={cfg.max_length}, "
                          "or no assistant token left after truncation)")
    if eval_convs and not evals and cfg.best_metric == "loss":
        # Eval rows were asked for, but without any the eval loss is never measured: best/ would
        # never be written and no eval curve drawn, which a run should not find out at its end.
        raise D.DataError(
            f"all {eval_dropped} eval examples were dropped (longer than max_length={cfg.max_length} or nothing to "
            "train on), so there is no eval loss for best_metric 'loss'; raise max_length, set overlong: truncate, "
            "or set eval_examples / eval_fraction to 0 to run without an eval set")
    return train, evals, dropped, eval_dropped


def _epoch_micro_batches(cfg: SFTConfig, examples: list, epoch: int, rank: int, world: int) -> list[list[int]]:
    """The micro-batches (lists of bins or example indices) this rank runs in ``epoch``; a pure
    function of (data, seed, epoch), which is what makes the data cursor resumable.

    Every rank gets ceil(M / world) of the epoch's M micro-batches, in contiguous shares: the
    last round is padded with the epoch's first micro-batches, as torch's DistributedSampler
    (drop_last=False, used by HF Trainer and TRL) pads with its first samples. So every example
    trains in every epoch and the ranks step in lockstep, at the price of at most world - 1
    micro-batches seen twice per epoch. Rounding down instead left up to world - 1 micro-batches
    untrained in every epoch; uneven shares would make one rank wait for a collective (the
    gradient all-reduce) that another never joins."""
    from thinkgym.sft_coldstart.packing import pack_examples

    if cfg.packing:
        units = pack_examples(examples, cfg.pack_length, seed=cfg.seed * 1_000_003 + epoch)
    else:
        order = list(range(len(examples)))
        random.Random(cfg.seed * 1_000_003 + epoch).shuffle(order)
        units = [[i] for i in order]
    mbs = [units[i : i + cfg.micro_batch_size] for i in range(0, len(units), cfg.micro_batch_size)]
    per_rank = math.ceil(len(mbs) / world)
    mbs += [mbs[i % len(mbs)] for i in range(per_rank * world - len(mbs))]
    return mbs[rank * per_rank : (rank + 1) * per_rank]


def _data_order(cfg: SFTConfig, examples: list, world: int, n_mbs: int) -> str:
    """A digest of everything the data cursor's meaning depends on: the examples themselves and
    how :func:`_epoch_micro_batches` orders and batches them (``n_mbs``: the epoch's
    micro-batches, over all ranks)."""
    import hashlib
    from array import array

    h = hashlib.sha256(repr((cfg.packing, cfg.pack_length, cfg.micro_batch_size, cfg.seed, world)).encode())
    if n_mbs % world:
        # Shares padded up to whole rounds: a checkpoint from when the tail was dropped counts
        # micro-batches of another layout, and must not resume on this one.
        h.update(b"padded-last-round")
    for e in examples:
        h.update(array("q", [len(e["input_ids"])]).tobytes())
        h.update(array("q", e["input_ids"]).tobytes())
        h.update(array("q", e["labels"]).tobytes())
    return h.hexdigest()


def _collate(cfg: SFTConfig, examples: list, mb: list[list[int]], pad_id: int) -> dict:
    from thinkgym.sft_coldstart.packing import collate_packed, collate_padded

    if cfg.packing:
        return collate_packed(examples, mb, pad_id, one_row=cfg.attn_implementation not in _MASKED_ATTENTION)
    return collate_padded(examples, [u[0] for u in mb], pad_id)


def _lr_lambda(cfg: SFTConfig, total: int):
    warm = cfg.warmup_steps or int(cfg.warmup_ratio * total)

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / (warm + 1)
        t = min(1.0, (step - warm) / max(1, total - warm))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    return f


def _rng_state() -> dict:
    import numpy as np
    import torch

    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def _set_rng_state(s: dict) -> None:
    import numpy as np
    import torch

    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])


def save_hf(engine: Any, tok: Any, out: Path, cfg: SFTConfig) -> Path:
    """Write an HF checkpoint (safetensors, tokenizer, chat template) that transformers and vLLM load."""
    import copy

    import torch.distributed as dist

    state = engine._zero3_consolidated_16bit_state_dict() if cfg.zero_stage == 3 else None  # collective
    if dist.get_rank() != 0:
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model = engine.module
    if cfg.lora_r:
        model = copy.deepcopy(model).merge_and_unload()  # the running model keeps its adapters
    # Training turns the config's KV cache off; the checkpoint is for inference, where a plain
    # forward should return a cache as the base model's does (generate() sets it either way).
    use_cache, model.config.use_cache = model.config.use_cache, True
    try:
        model.save_pretrained(tmp, safe_serialization=True, state_dict=state)
    finally:
        model.config.use_cache = use_cache
    tok.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)  # readers never see a half-written checkpoint
    return out


def _over_budget(cfg: SFTConfig, elapsed: float, train_s: float, device: Any) -> str | None:
    """``"max_time_s"`` or ``"max_train_s"`` once a time budget is spent, else None.

    Ranks read different clocks; each takes the slowest rank's times, so all stop at the same
    step (one rank checkpointing while another steps would hang the collectives)."""
    if not (cfg.max_time_s or cfg.max_train_s):
        return None
    import torch
    import torch.distributed as dist

    t = torch.tensor([elapsed, train_s], dtype=torch.float64, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    # A spent training budget finishes the run (final/), which outranks a pause for a resume.
    if cfg.max_train_s and t[1] >= cfg.max_train_s:
        return "max_train_s"
    if cfg.max_time_s and t[0] >= cfg.max_time_s:
        return "max_time_s"
    return None


def _signalled(stop: dict[str, str], device: Any, world: int) -> bool:
    """Whether any rank got SIGINT or SIGTERM: every rank stops at the same step (one rank
    checkpointing while another steps would hang the collectives)."""
    if world == 1:
        return bool(stop)
    import torch
    import torch.distributed as dist

    t = torch.tensor([1.0 if stop else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def _finished_run(cfg: SFTConfig, out: Path, total: int) -> dict[str, Any] | None:
    """--resume of a run whose checkpoint is at ``total`` steps and which wrote final/: its
    result.json (left as it is) with the losses of its metrics.jsonl, else None."""
    latest = out / "checkpoints" / "latest"
    if not (cfg.resume and latest.is_file() and (out / "final").is_dir() and (out / "result.json").is_file()):
        return None
    step = latest.read_text().strip().removeprefix("step-")
    if not (step.isdigit() and int(step) >= total):
        return None
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()] \
        if (out / "metrics.jsonl").is_file() else []
    return {**json.loads((out / "result.json").read_text()), "train_loss": [r["train/loss"] for r in rows],
            "eval_loss": [r["eval/loss"] for r in rows if "eval/loss" in r]}


def _better(metric: str, new: dict[str, Any], best: dict[str, Any]) -> bool:
    """Does the eval ``new`` beat ``best``? Higher accuracy (ties: lower loss), or lower loss."""
    if metric == "accuracy":
        if new["accuracy"] is None:
            return False
        if best["accuracy"] is None or new["accuracy"] != best["accuracy"]:
            return best["accuracy"] is None or new["accuracy"] > best["accuracy"]
        return new["loss"] is not None and (best["loss"] is None or new["loss"] < best["loss"])
    return new["loss"] is not None and (best["loss"] is None or new["loss"] < best["loss"])


def _check_dev_env(cfg: SFTConfig) -> None:
    """Fail before the model loads if the dev env cannot be built or is too small."""
    import gymnasium

    from thinkgym.envs import register_envs

    register_envs()
    try:
        env = gymnasium.make(cfg.eval_env, **cfg.eval_env_kwargs)
    except Exception as e:  # noqa: BLE001 - re-raised with the config key that caused it
        raise ConfigError(f"eval_env {cfg.eval_env!r} with eval_env_kwargs {cfg.eval_env_kwargs}: {e}") from e
    n = len(env.unwrapped.source)
    env.close()
    if n < cfg.eval_env_items:
        raise ConfigError(f"eval_env {cfg.eval_env!r} has {n} items, fewer than eval_env_items={cfg.eval_env_items}")


# What an SFT run leaves in output_dir that a fresh run would prune, mix with its own or overwrite.
EARLIER_RUN = ("checkpoints/step-*", "checkpoints/latest", "best", "final")
# Written into each checkpoint tag: the settings its saved state is laid out by (see _checkpoint_setup).
SETUP_FILE = "thinkgym_setup.json"


def _checkpoint_setup(cfg: SFTConfig) -> dict[str, Any]:
    """The settings a DeepSpeed checkpoint's saved state depends on: which tensors it holds
    (LoRA, frozen parts), their precision, and how ZeRO partitions them over the processes.
    Resumed with other values, DeepSpeed's loader fails on a KeyError, an AssertionError or a
    missing file that do not say why."""
    return {"zero_stage": cfg.zero_stage, "dtype": cfg.dtype, "lora_r": cfg.lora_r,
            "lora_target_modules": sorted(cfg.lora_target_modules) if cfg.lora_r else [],
            "freeze_embeddings": cfg.freeze_embeddings, "freeze_lm_head": cfg.freeze_lm_head,
            "processes": int(os.environ.get("WORLD_SIZE", "1"))}


def _check_resume(cfg: SFTConfig) -> None:
    """The checkpoint ``latest`` names exists and was saved with this run's :func:`_checkpoint_setup`."""
    ckpt_dir = Path(cfg.output_dir) / "checkpoints"
    tag = (ckpt_dir / "latest").read_text().strip()
    if not tag or not (ckpt_dir / tag).is_dir():  # an empty latest would name checkpoints/ itself
        raise ConfigError(f"resume: {ckpt_dir}/latest names checkpoint {tag!r}, which is missing; point latest at "
                          f"one of {sorted(p.name for p in ckpt_dir.glob('step-*'))} or start a fresh run")
    f = ckpt_dir / tag / SETUP_FILE
    if not f.is_file():  # checkpoints from before the record
        return
    saved, now = json.loads(f.read_text()), _checkpoint_setup(cfg)
    changed = [f"{k}: {saved.get(k)!r} -> {v!r}" for k, v in now.items() if saved.get(k) != v]
    if changed:
        raise ConfigError(f"resume: checkpoint {ckpt_dir / tag} was saved with other settings ({'; '.join(changed)}); "
                          "its weights and optimizer state only load with the same ones. Resume with them, or start "
                          "a fresh run (e.g. model: <checkpoint's final/>, another output_dir)")


def check_config(cfg: SFTConfig) -> None:
    """Checks that need the filesystem or the registries, run before anything heavy starts:
    the model, the data sources and the dev env. Raises :class:`ConfigError` naming the key."""
    check_output_dir(cfg.output_dir)
    if not (cfg.resume and (Path(cfg.output_dir) / "checkpoints" / "latest").exists()):  # a fresh run
        check_fresh_run(cfg.output_dir, EARLIER_RUN, cfg.overwrite)
    else:
        _check_resume(cfg)
    _check_model(cfg.model)
    _check_datasets(cfg.datasets)
    _check_tasks(cfg)
    if cfg.eval_env:
        _check_dev_env(cfg)


def _check_model(model: str) -> None:
    """A local HF model directory or a hub id ('tiny': built here). A hub id is left to
    transformers to fetch, unless offline mode rules out a download and the cache lacks it."""
    from thinkgym.hub import ModelNotFound, check_model

    if model in ("", "tiny"):
        return
    try:
        check_model(model)
    except ModelNotFound as e:
        raise ConfigError(f"model: {e}") from None



def _check_datasets(specs: list[str]) -> None:
    for spec in specs:
        if spec.startswith("hf:"):
            name = spec[3:].partition(":")[0]
            if not name:
                raise ConfigError(f"datasets: {spec!r} names no dataset (hf:NAME_OR_DIR[:SPLIT])")
            # A path-like name must exist; anything else is left to `datasets` (a hub name).
            if name.startswith(("/", "./", "../", "~")) and not Path(name).expanduser().exists():
                raise ConfigError(f"datasets: {spec!r}: no such directory {name}")
            continue
        p = Path(spec)
        if p.is_dir():
            raise ConfigError(f"datasets: {spec!r} is a directory; a saved HF dataset is written hf:{spec}")
        if not p.is_file():
            raise ConfigError(f"datasets: {spec!r}: no such file")
        with p.open("rb") as f:  # stops at the first row: the rows themselves are read with the tokenizer
            if not any(line.strip() for line in f):
                raise ConfigError(f"datasets: {spec!r} is empty (no rows)")


def _task_param_names(cls: type) -> set[str] | None:
    """The knobs a task source takes, or None when its constructor does not say."""
    import inspect

    if getattr(cls, "defaults", None):
        return set(cls.defaults)
    params = inspect.signature(cls.__init__).parameters.values()
    if any(q.kind is q.VAR_KEYWORD for q in params):
        return None
    return {q.name for q in params if q.name not in ("self", "seed", "size")}


def _check_tasks(cfg: SFTConfig) -> None:
    import difflib

    from thinkgym.tasks import TASKS

    known = TASKS.names()
    unknown = [t for t in cfg.tasks if t not in known]
    if unknown:
        hint = "; ".join(f"{t!r}" + (f" (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(t, known, 1)) else "")
                         for t in unknown)
        raise ConfigError(f"tasks: unknown task source(s) {hint}; known: {', '.join(known)}")
    # Items used per task: eval block, training block, then the pretraining text (see _build_data).
    need = cfg.eval_examples + cfg.train_examples
    if cfg.stage == "pretrain" or cfg.pretrain_steps:
        need += cfg.pretrain_examples
    for name in cfg.tasks:
        cls, params = TASKS.get(name), cfg.task_params.get(name, {})
        names = _task_param_names(cls)
        bad = sorted(set(params) - names) if names is not None else []
        if bad:
            hint = "; ".join(f"task_params.{name}.{k}" + (f" (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(k, names, 1)) else "")
                             for k in bad)
            raise ConfigError(f"{hint}: unknown parameter of task {name!r}; known: {sorted(names)}")
        try:
            src = cls(seed=cfg.task_seed, **params)
        except (TypeError, ValueError, KeyError, OSError) as e:
            raise ConfigError(f"task_params.{name}: {e}") from None
        if len(src) < need:
            raise ConfigError(f"tasks: {name!r} has {len(src)} items, fewer than the {need} this run reads "
                              "(eval_examples + train_examples, + pretrain_examples when pretraining)")
        sol = src[0]["metadata"].get("solution") if cfg.stage == "sft" and cfg.eval_examples + cfg.train_examples else "-"
        if not (isinstance(sol, str) and sol):
            raise ConfigError(f"tasks: {name!r} items have no worked solution (metadata.solution) to train on; "
                              "use its data through datasets instead")


def dev_accuracy(cfg: SFTConfig, model: Any, tok: Any, device: Any, rank: int, world: int) -> tuple[float | None, int]:
    """Greedy accuracy (reward >= 1, as the eval harness counts it) on items
    0 .. eval_env_items-1 of ``eval_env``; each rank answers every world-th item. Also returns
    how many grades failed: those items are left out (a grader outage is not the policy's), and
    the accuracy is None when every grade failed."""
    import torch
    import torch.distributed as dist

    from thinkgym.sampler.hf_backend import HFSampler
    from thinkgym.sampler.rollout import collect_rollouts
    from thinkgym.sampler.types import SamplingConfig

    indices = list(range(rank, cfg.eval_env_items, world))
    counts = torch.zeros(3, dtype=torch.float64, device=device)  # right, graded, grader errors
    threads, training = torch.get_num_threads(), model.training
    if cfg.eval_threads:
        # Decode steps of a small model are tiny ops; extra OpenMP threads spin-wait on each
        # other. The tiny model answers as fast with 1 thread as with 2 on an idle 2-core CPU,
        # and about 5x faster with 1 when the CPU is shared.
        torch.set_num_threads(cfg.eval_threads)
    try:
        if indices:
            sampler = HFSampler(model, tok, device=str(device))
            batch = collect_rollouts(cfg.eval_env, sampler, indices=indices, group_size=1, env_kwargs=cfg.eval_env_kwargs,
                                     cfg=SamplingConfig(n=1, temperature=0.0, max_tokens=cfg.eval_max_tokens, seed=cfg.seed))
            counts[0] = sum(e.reward is not None and e.reward >= 1.0 for e in batch.episodes)
            counts[1] = sum(not e.infra_error for e in batch.episodes)
            counts[2] = len(batch.episodes) - counts[1]
    finally:
        torch.set_num_threads(threads)
        model.train(training)  # the sampler switched the module to eval mode
    dist.all_reduce(counts)
    if counts[2] and rank == 0:
        print(f"[{cfg.stage}] warning: the grader failed on {int(counts[2])} of {cfg.eval_env_items} dev items; "
              "they are left out of the dev accuracy", file=sys.stderr, flush=True)
    return (float(counts[0] / counts[1]) if counts[1] else None), int(counts[2])


@dataclass
class _Curve:
    train: list = field(default_factory=list)  # (step, loss)
    eval: list = field(default_factory=list)  # (step, loss)


def _plot(curve: _Curve, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    if curve.train:
        ax.plot(*zip(*curve.train), label="train", lw=1)
    if curve.eval:
        ax.plot(*zip(*curve.eval), "o-", label="eval", lw=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (assistant tokens)")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- the run


def train(cfg: SFTConfig) -> dict[str, Any]:
    """Run SFT (or pretraining, then SFT) and return a summary with checkpoint paths and losses."""
    cfg.validate()
    check_config(cfg)  # model, data and dev env, before the tiny build and distributed setup
    out = Path(cfg.output_dir)
    if cfg.model in ("", "tiny"):
        cfg = dataclasses.replace(cfg, model=str(_ensure_tiny(cfg, out)))
    if cfg.stage == "sft" and cfg.pretrain_steps > 0:
        pre = out / "pretrain"
        if not (pre / "final" / "config.json").exists():
            train(dataclasses.replace(
                cfg, stage="pretrain", output_dir=str(pre), max_steps=cfg.pretrain_steps, pretrain_steps=0,
                learning_rate=cfg.pretrain_learning_rate, lora_r=0, save_best=False, plot=cfg.plot,
                best_metric="loss", eval_env="",
            ))
        cfg = dataclasses.replace(cfg, model=str(pre / "final"), pretrain_steps=0)

    import deepspeed
    import torch
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from thinkgym.sft_coldstart.packing import model_inputs, token_loss

    from thinkgym.distributed import setup_distributed

    rank, world, _ = setup_distributed()
    main = rank == 0
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)

    # Data first: a bad row fails before the model loads.
    try:
        tok = AutoTokenizer.from_pretrained(cfg.model)
    except OSError as e:  # a hub id that does not resolve (check_config leaves hub ids to transformers)
        raise ConfigError(f"model: cannot load {cfg.model!r}: {' '.join(str(e).split())}") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    train_ex, eval_ex, dropped, eval_dropped = _build_data(cfg, tok)
    if main and eval_dropped:
        left = f"{len(eval_ex)} left" if eval_ex else "none left: no eval loss will be measured"
        print(f"[{cfg.stage}] warning: {eval_dropped} eval examples dropped (longer than max_length={cfg.max_length}"
              f" or nothing to train on), {left}", file=sys.stderr)
    n_mbs = len(_epoch_micro_batches(cfg, train_ex, 0, 0, 1))  # all ranks'; packing makes as many bins every epoch
    if n_mbs < 1:
        from thinkgym.sft_coldstart.data import DataError

        raise DataError(f"{len(train_ex)} training examples make no micro-batch")
    n_micro = math.ceil(n_mbs / world)  # per rank, the last round padded (see _epoch_micro_batches)
    # Rounded up: the last step of an epoch may take micro-batches of the next one (the data cursor
    # runs on), whereas whole steps per epoch, rounded down, never train the epoch's remainder
    # (with epochs: 1, up to gradient_accumulation_steps - 1 micro-batches of the data).
    # Rounded to 9 places before the ceiling: in floats 1.1 epochs of 50 micro-batches is 55.00000000000001.
    steps_per_epoch = n_micro / cfg.gradient_accumulation_steps
    total = cfg.max_steps or max(1, math.ceil(round(cfg.epochs * n_micro / cfg.gradient_accumulation_steps, 9)))
    finished = _finished_run(cfg, out, total)
    if finished is not None:
        if main:
            of = f"max_steps {total}" if cfg.max_steps else f"{total} steps for epochs {cfg.epochs:g}"
            print(f"[{cfg.stage}] --resume: {out} already finished at step {finished['steps']} ({of}); nothing to do",
                  file=sys.stderr)
        return finished

    # Model: loaded in float32; DeepSpeed casts to bf16/fp16 and keeps fp32 master weights.
    model = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=torch.float32, attn_implementation=cfg.attn_implementation)
    model.config.use_cache = False
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if cfg.freeze_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)  # tied lm_head shares this tensor
    if cfg.freeze_lm_head and model.get_output_embeddings() is not None:
        model.get_output_embeddings().weight.requires_grad_(False)
    if cfg.lora_r:
        from peft import LoraConfig, get_peft_model

        try:
            model = get_peft_model(model, LoraConfig(
                r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                target_modules=cfg.lora_target_modules, task_type="CAUSAL_LM",
            ))
        except ValueError as e:  # peft: no module of the model matches the names
            raise ConfigError(f"lora_target_modules {cfg.lora_target_modules}: {e}") from None
    params = [p for p in model.parameters() if p.requires_grad]
    n_train, n_all = sum(p.numel() for p in params), sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, betas=tuple(cfg.adam_betas), eps=cfg.adam_eps,
                                  weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg, total))
    ds_config = {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
        "gradient_clipping": cfg.max_grad_norm,
        "zero_optimization": {"stage": cfg.zero_stage, "stage3_gather_16bit_weights_on_model_save": True},
        "bf16": {"enabled": cfg.dtype == "bfloat16"},
        "fp16": {"enabled": cfg.dtype == "float16"},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config, dist_init_required=False
    )
    device = engine.device

    # Resume: weights, optimizer, scheduler from DeepSpeed; RNG and data cursor from client state.
    ckpt_dir = out / "checkpoints"
    step, micro_cursor, tokens_seen, train_s = 0, 0, 0, 0.0  # train_s: optimizer steps only, without evals
    best: dict[str, Any] = {"step": None, "loss": None, "accuracy": None}  # the eval that made best/
    order = _data_order(cfg, train_ex, world, n_mbs)
    if cfg.resume and (ckpt_dir / "latest").exists():
        path, client = engine.load_checkpoint(str(ckpt_dir))
        if path is None:
            raise RuntimeError(f"could not load checkpoint from {ckpt_dir}")
        step, micro_cursor = client["step"], client["micro_cursor"]
        tokens_seen = client["tokens_seen"]
        # max_train_s budgets the whole run: a resumed run gets what the checkpoint left of it.
        train_s = client.get("train_seconds", 0.0)
        if "best" in client:
            best = client["best"]
        elif client.get("best_eval", float("inf")) < float("inf"):  # checkpoints from before best_metric
            best = {**best, "loss": client["best_eval"]}
        if client.get("data_order", order) != order:  # checkpoints from before the check carry none
            # The cursor counts micro-batches of the checkpoint's data order: on another order it
            # would repeat some examples and skip others without a word.
            raise ConfigError(
                "resume: the training data or its batching changed since the checkpoint in "
                f"{ckpt_dir} (rows, max_length, overlong, packing, pack_length, micro_batch_size, seed or "
                "process count), so its data cursor no longer points at the same examples; resume with the "
                "same settings, or start a fresh run (e.g. model: <checkpoint's final/>, another output_dir)")
        _set_rng_state(client["rng"][rank] if rank < len(client["rng"]) else client["rng"][0])
        mf = out / "metrics.jsonl"
        if main and mf.exists():  # drop records of steps after the checkpoint (they are redone)
            keep = [l for l in mf.read_text().splitlines() if l.strip() and json.loads(l)["step"] <= step]
            mf.write_text("".join(l + "\n" for l in keep))
    elif main and out.exists():
        (out / "metrics.jsonl").unlink(missing_ok=True)
        if cfg.overwrite:  # check_config refused an earlier run's files otherwise
            clear_earlier_run(out, EARLIER_RUN, cfg.stage)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        import yaml

        (out / "config.yaml").write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))

    def checkpoint() -> None:
        rng = [None] * world
        dist.all_gather_object(rng, _rng_state())
        if main:  # before DeepSpeed's save, which writes latest last: latest never names a tag without it
            (ckpt_dir / f"step-{step}").mkdir(parents=True, exist_ok=True)
            (ckpt_dir / f"step-{step}" / SETUP_FILE).write_text(json.dumps(_checkpoint_setup(cfg)))
        engine.save_checkpoint(str(ckpt_dir), tag=f"step-{step}", client_state={
            "step": step, "micro_cursor": micro_cursor, "best": best, "tokens_seen": tokens_seen, "rng": rng,
            "train_seconds": train_s, "data_order": order,
        })
        if main:  # prune old ones
            tags = sorted((p for p in ckpt_dir.glob("step-*") if p.is_dir()), key=lambda p: int(p.name[5:]))
            for p in tags[: -cfg.keep_checkpoints]:
                shutil.rmtree(p, ignore_errors=True)

    @torch.no_grad()
    def evaluate() -> float | None:
        if not eval_ex:
            return None
        from thinkgym.sft_coldstart.packing import collate_packed, pack_examples

        engine.eval()
        loss_sum = torch.zeros(2, dtype=torch.float64, device=device)
        bins = pack_examples(eval_ex, max(cfg.pack_length, max(len(e["input_ids"]) for e in eval_ex)), seed=None)
        # Every rank runs the same number of forwards (ZeRO-3 gathers weights collectively).
        for j in range(math.ceil(len(bins) / world)):
            k = rank + j * world
            batch = {n: v.to(device) for n, v in collate_packed(eval_ex, [bins[k % len(bins)]], tok.pad_token_id).items()}
            keep = (batch["targets"] != -100).any(0).nonzero().squeeze(-1)
            logits = engine(**model_inputs(batch), logits_to_keep=keep).logits
            if k < len(bins):
                loss_sum += torch.tensor([token_loss(logits, batch["targets"][:, keep]).item(), (batch["targets"] != -100).sum().item()],
                                         dtype=torch.float64, device=device)
        dist.all_reduce(loss_sum)
        engine.train()
        return (loss_sum[0] / loss_sum[1].clamp(min=1)).item()

    writer = None
    if main and cfg.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "tb"))
    metrics_f = open(out / "metrics.jsonl", "a") if main else None
    curve = _Curve()

    def log(rec: dict) -> None:
        if not main:
            return
        metrics_f.write(json.dumps(rec) + "\n")
        metrics_f.flush()
        if writer:
            for k, v in rec.items():
                if k != "step" and isinstance(v, (int, float)) and v is not None:
                    writer.add_scalar(k, v, rec["step"])
            writer.flush()  # a run stopped by Ctrl-C keeps its curves

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    bar = Progress(TextColumn(f"[bold]{cfg.stage}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("loss {task.fields[loss]:.4f}  {task.fields[tps]:,.0f} tok/s"),
                   TimeElapsedColumn(), TimeRemainingColumn(), disable=not (main and cfg.progress))
    if main:
        print(f"[{cfg.stage}] {len(train_ex)} train / {len(eval_ex)} eval examples ({dropped} train, {eval_dropped} eval dropped), "
              f"{n_train:,}/{n_all:,} trainable params, {total} steps, {steps_per_epoch:g} steps/epoch, "
              f"ZeRO-{cfg.zero_stage}, {world} process(es), {'packed' if cfg.packing else 'padded'}", file=sys.stderr)

    # ------------------------------------------------------------------ loop
    # SIGTERM or a first Ctrl-C: finish the step, checkpoint it, then stop (as `thinkgym train` does).
    stop: dict[str, str] = {}

    def on_signal(signum: int, _: Any) -> None:
        stop["signal"] = signal.Signals(signum).name
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C stops at once
        if main:
            print(f"\n[{cfg.stage}] {stop['signal']}: stopping after this step, with a checkpoint "
                  "(Ctrl-C again: at once)", file=sys.stderr, flush=True)

    handlers = {}
    if threading.current_thread() is threading.main_thread():  # only the main thread may set handlers
        handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)
                    if signal.getsignal(s) not in (signal.SIG_IGN, None)}
    try:
        engine.train()
        t0, stop_reason, start_step, tokens0 = time.perf_counter(), "done", step, tokens_seen
        epoch_cache: dict[int, list] = {}
        with bar:
            task = bar.add_task("train", total=total, completed=step, loss=float("nan"), tps=0.0)
            while step < total:
                if _signalled(stop, device, world):
                    stop_reason = stop.get("signal", "SIGTERM")  # this rank's signal, or another rank's
                    break
                if cfg.stop_after_steps and step - start_step >= cfg.stop_after_steps:
                    stop_reason = "stop_after_steps"
                    break
                over = _over_budget(cfg, time.perf_counter() - t0, train_s, device)
                if over:
                    stop_reason = over
                    break
                # Fetch this step's micro-batches first so the loss can be normalized by the
                # number of trainable tokens in the whole step, on every rank (a true per-token mean).
                batches = []
                for _ in range(cfg.gradient_accumulation_steps):
                    epoch, idx = divmod(micro_cursor, n_micro)
                    if epoch not in epoch_cache:
                        epoch_cache = {epoch: _epoch_micro_batches(cfg, train_ex, epoch, rank, world)}
                    batches.append(_collate(cfg, train_ex, epoch_cache[epoch][idx], tok.pad_token_id))
                    micro_cursor += 1
                counts = torch.tensor([sum(int((b["targets"] != -100).sum()) for b in batches),
                                       sum(int(b.get("attention_mask", b["input_ids"] != tok.pad_token_id).sum()) for b in batches)],
                                      dtype=torch.float64, device=device)
                if world > 1:  # every rank's tokens: ranks' counts differ
                    dist.all_reduce(counts)
                n_tgt, n_tok = int(counts[0]), int(counts[1])
                ts = time.perf_counter()
                loss_sum = torch.zeros((), dtype=torch.float64, device=device)
                for b in batches:
                    b = {k: v.to(device) for k, v in b.items()}
                    # Project to the vocabulary only where a target exists (assistant tokens): the
                    # prompt's logits would be thrown away, and on large vocabularies they dominate memory.
                    keep = (b["targets"] != -100).any(0).nonzero().squeeze(-1)
                    logits = engine(**model_inputs(b), logits_to_keep=keep).logits
                    # DeepSpeed averages gradients over ranks, so `* world` makes the step's gradient the
                    # mean over all ranks' trainable tokens, not a mean of per-rank means.
                    loss = token_loss(logits, b["targets"][:, keep]) * world / max(1, n_tgt)
                    engine.backward(loss, scale_wrt_gas=False)
                    engine.step()
                    loss_sum += loss.detach().double() / world
                if world > 1:
                    dist.all_reduce(loss_sum)
                loss_sum = loss_sum.item()
                step += 1
                tokens_seen += n_tok
                dt = time.perf_counter() - ts
                train_s += dt
                gn = engine.get_global_grad_norm()
                rec = {"step": step, "train/loss": loss_sum, "train/lr": scheduler.get_last_lr()[0],
                       "train/tokens_per_s": n_tok / dt, "train/tokens": tokens_seen, "train/seconds": train_s,
                       "train/grad_norm": float(gn) if gn is not None else None}
                curve.train.append((step, loss_sum))
                # The step that spends the training budget is the run's last: it is evaluated like step == total.
                last = step == total or (cfg.max_train_s > 0
                                         and _over_budget(cfg, time.perf_counter() - t0, train_s, device) == "max_train_s")
                if (cfg.eval_every and step % cfg.eval_every == 0) or last:
                    ev = evaluate()
                    acc, errors = dev_accuracy(cfg, engine.module, tok, device, rank, world) if cfg.eval_env else (None, 0)
                    if acc is not None:
                        rec["eval/accuracy"] = acc
                    if cfg.eval_env:
                        rec["eval/grader_errors"] = errors
                    if ev is not None:
                        rec["eval/loss"] = ev
                        curve.eval.append((step, ev))
                    if _better(cfg.best_metric, {"step": step, "loss": ev, "accuracy": acc}, best):
                        best = {"step": step, "loss": ev, "accuracy": acc}
                        if cfg.save_best:
                            save_hf(engine, tok, out / "best", cfg)
                log(rec)
                bar.update(task, completed=step, loss=loss_sum, tps=rec["train/tokens_per_s"])
                if cfg.save_every and step % cfg.save_every == 0 and step < total:
                    checkpoint()

        elapsed = time.perf_counter() - t0
        if stop_reason != "done" or cfg.save_every:
            checkpoint()
        final = save_hf(engine, tok, out / "final", cfg) if stop_reason in ("done", "max_train_s") else None
        result = {
            "stage": cfg.stage, "stop_reason": stop_reason, "steps": step, "total_steps": total,
            "final": str(final) if final else None,
            "best": str(out / "best") if cfg.save_best and (out / "best").exists() else None,
            "best_eval_loss": best["loss"], "best_eval_accuracy": best["accuracy"], "best_step": best["step"],
            "train_loss": [l for _, l in curve.train], "eval_loss": [l for _, l in curve.eval],
            "tokens": tokens_seen, "seconds": elapsed, "train_seconds": train_s,
            "tokens_per_s": ((tokens_seen - tokens0) / elapsed) if elapsed > 0 and step > start_step else 0.0,
            "train_examples": len(train_ex), "eval_examples": len(eval_ex), "trainable_params": n_train,
        }
        if main:
            metrics_f.close()
            if writer:
                writer.close()
            if cfg.plot and curve.train:
                _plot(curve, out / "loss.png", f"{cfg.stage}: {Path(cfg.model).name}")
            (out / "result.json").write_text(json.dumps({k: v for k, v in result.items() if k not in ("train_loss", "eval_loss")}, indent=1))
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)
    if stop_reason == "SIGINT":  # checkpointed: the caller's Ctrl-C handling (exit 130, "rerun with --resume")
        raise KeyboardInterrupt
    if stop_reason == "SIGTERM":
        raise SystemExit(143)  # 128 + SIGTERM, the status the signal itself would have left
    return result


_USAGE = """usage: python -m thinkgym.sft_coldstart.train CONFIG.yaml [key=value ...]

Cold-start SFT from a YAML file of SFTConfig fields (see examples/sft-*.yaml); each key=value
overrides one field (the value is read as YAML; task_params.NAME.KNOB=VALUE sets one knob).
The entry point for launchers (deepspeed, torchrun); `thinkgym sft --help` is the same run as a
command. Prints a JSON summary (final, best, steps, ...) on rank 0; exits 2 on a config error."""


def main(argv: list[str] | None = None) -> None:
    """``python -m thinkgym.sft_coldstart.train CONFIG.yaml [key=value ...]`` (for launchers)."""
    from thinkgym.config import load_config

    from thinkgym.config import ConfigError, parse_sets
    from thinkgym.sft_coldstart.data import DataError

    args = [a for a in (argv if argv is not None else sys.argv[1:]) if not a.startswith("--local_rank")]
    if not args or args[0] in ("-h", "--help"):
        print(_USAGE, file=sys.stdout if args else sys.stderr)
        raise SystemExit(0 if args else 2)
    cfg = None
    try:
        cfg = load_config(SFTConfig, args[0], parse_sets(args[1:], flag="override"))
        res = train(cfg)
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:  # Ctrl-C: the finished steps are checkpointed (a second Ctrl-C: the last checkpoint)
        from thinkgym.sft_coldstart.cli import _interrupted

        if int(os.environ.get("RANK", "0")) == 0:
            print(_interrupted(Path(cfg.output_dir)) if cfg is not None else "interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({k: res[k] for k in ("final", "best", "steps", "best_eval_loss", "best_eval_accuracy", "tokens_per_s")}))


if __name__ == "__main__":
    main()
