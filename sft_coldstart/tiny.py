"""Tiny model kit: a tokenizer trained locally and a small random-init causal LM.

Everything is built from scratch (no download), saved with ``save_pretrained`` and loaded
back through the same ``from_pretrained`` / vLLM code path a real HF model uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

# ChatML, with `{% generation %}` around assistant content so HF can return an
# assistant-token mask (`return_assistant_tokens_mask=True`).
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{%- else -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Reasoning-format markers are single tokens so format and thinking budgets count cleanly.
FORMAT_TOKENS = ["<think>", "</think>", "<answer>", "</answer>"]

_DEFAULT_CORPUS = [
    "What is 12 + 7 * 3? Let's compute step by step. 7 * 3 = 21, then 12 + 21 = 33.",
    "Using the numbers 3, 5, 8 and 25, reach the target 100 with + - * /. (25 - 5) * (8 - 3) = 100",
    "Tom has 5 apples and buys 3 more bags of 4 apples each. How many apples does he have now?",
    "Solve for x: 2x + 3 = 11. Subtract 3 from both sides, then divide by 2, so x = 4.",
    "The answer is \\boxed{\\frac{3}{4}}; the interval is [0, 1) and the set is \\{1, 2, 3\\}.",
    "def solve(a, b):\n    return a + b\n\nprint(solve(2, 3))",
    "Think first, then give the final answer inside the answer tags.",
    "First, Then, So, Therefore, the total is, remaining, each, per, times, plus, minus, equals",
]


@dataclass
class TinyConfig:
    """Shape of the tiny model. Defaults give ~1M parameters."""

    vocab_size: int = 512  # target BPE vocabulary (bytes + merges + specials)
    hidden_size: int = 128
    intermediate_size: int = 384
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 1024
    seed: int = 0

    def validate(self) -> None:
        # Counts first: the divisibility checks below divide by the head counts.
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "max_position_embeddings"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads {self.num_attention_heads} is not divisible by num_key_value_heads {self.num_key_value_heads}"
            )


def task_corpus(tasks: Iterable[str], items: int = 2000, seed: int = 0) -> list[str]:
    """Question + worked-solution text of the first ``items`` items of each task source, so the
    tokenizer's merges fit the text the model will see."""
    from thinkgym.tasks import make_task

    out = []
    for name in tasks:
        src = make_task(name, seed=seed)
        for i in range(min(items, len(src))):
            it = src[i]
            out.append(f"{it['question']}\n{it['metadata'].get('solution', '')}\n{it['answer']}")
    return out


def build_tokenizer(corpus: Iterable[str] | None = None, vocab_size: int = 512):
    """Train a byte-level BPE tokenizer (digits split one per token) on ``corpus``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # Single digits keep arithmetic learnable for a tiny model.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS + FORMAT_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = list(corpus) if corpus is not None else []
    tok.train_from_iterator(texts + _DEFAULT_CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=["<|im_start|>"],
        model_max_length=4096,
        clean_up_tokenization_spaces=False,
    )
    # Format markers are added tokens (matched whole in any text) but not "special",
    # so decoding with skip_special_tokens keeps them visible to graders.
    fast.add_tokens(FORMAT_TOKENS)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_model(
    out_dir: str | Path,
    config: TinyConfig | None = None,
    corpus: Iterable[str] | None = None,
) -> Path:
    """Build a tokenizer and a random-init Qwen2 model and save both to ``out_dir``."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    cfg = config or TinyConfig()
    cfg.validate()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(corpus, cfg.vocab_size)
    mcfg = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=True,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
        torch_dtype="float32",
    )
    torch.manual_seed(cfg.seed)
    model = Qwen2ForCausalLM(mcfg).to(torch.float32)
    model.generation_config = GenerationConfig(
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, do_sample=True
    )
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out
