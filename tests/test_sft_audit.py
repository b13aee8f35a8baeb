"""Cold-start SFT edge cases: prompt/completion rows train only the completion, template errors
name the row, a leading assistant turn under prefix rendering, the eval split of small datasets,
whole epochs, packing under every CPU attention implementation, resume checks, the saved config,
and the tiny kit's shape checks."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
from test_sft_train import _cfg as _train_cfg
from test_sft_train import _chat_rows

from thinkgym.sft_coldstart.data import (
    DataError,
    build_examples,
    load_jsonl,
    render,
    row_to_conversation,
    split_holdout,
    trainable_text,
    validate_conversation,
)

# ChatML without {% generation %} markers: the prefix-rendering path.
PLAIN_CHATML = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)
# Like Qwen2.5's: a default system turn when the conversation has none.
DEFAULT_SYSTEM = (
    "{%- if messages[0]['role'] != 'system' -%}{{ '<|im_start|>system\nYou are helpful.<|im_end|>\n' }}{%- endif -%}"
    + PLAIN_CHATML
)
# Alpaca-style: turns end on plain text, so an eos is inserted after each trained turn.
ALPACA = (
    "{%- for m in messages -%}{%- if m['role'] == 'user' -%}{{ '### Instruction:\n' + m['content'] + '\n\n' }}"
    "{%- elif m['role'] == 'assistant' -%}{{ '### Response:\n' + m['content'] + '\n\n' }}{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '### Response:\n' }}{%- endif -%}"
)
# Like Mistral's: the template itself refuses a system turn or roles that do not alternate.
ALTERNATING_ONLY = (
    "{%- for m in messages -%}{%- if (m['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{%- endif -%}"
    "{%- if m['role'] == 'user' -%}{{ '[INST] ' + m['content'] + ' [/INST]' }}"
    "{%- else -%}{{ m['content'] + eos_token }}{%- endif -%}{%- endfor -%}"
)


def _tok(model_dir, template=None):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    if template:
        tok.chat_template = template
    return tok


# ----------------------------------------------------------------------------- rendering


PROMPT_COMPLETION = {
    "prompt": [
        {"role": "user", "content": "Draft an answer: what is 2 + 3?"},
        {"role": "assistant", "content": "A draft from another model: 6."},
        {"role": "user", "content": "Check it and answer again."},
    ],
    "completion": [{"role": "assistant", "content": "<think>2 + 3 = 5</think>\n<answer>5</answer>"}],
}


@pytest.mark.parametrize("template", [None, PLAIN_CHATML, ALPACA], ids=["markers", "prefix", "alpaca"])
def test_prompt_completion_row_trains_only_the_completion(tiny_model_dir, template):
    """A prompt/completion row's prompt is context (TRL's completion-only loss): an assistant
    turn inside it (an earlier answer, another model's draft) must not be trained."""
    tok = _tok(tiny_model_dir, template)
    ex = render(tok, row_to_conversation(PROMPT_COMPLETION, "x.jsonl:1"))
    answer = PROMPT_COMPLETION["completion"][0]["content"]
    assert trainable_text(tok, ex) == [answer + tok.eos_token]
    # The same messages as a messages row train both assistant turns, and render the same tokens
    # (Alpaca: less the eos inserted after the trained draft).
    as_messages = render(tok, validate_conversation(PROMPT_COMPLETION["prompt"] + PROMPT_COMPLETION["completion"], "x"))
    assert len(trainable_text(tok, as_messages)) == 2
    if template != ALPACA:
        assert ex["input_ids"] == as_messages["input_ids"]
    else:
        assert ex["input_ids"].count(tok.eos_token_id) == 1 and as_messages["input_ids"].count(tok.eos_token_id) == 2


def test_prompt_completion_row_needs_an_assistant_turn_in_the_completion():
    row = {"prompt": PROMPT_COMPLETION["prompt"], "completion": [{"role": "user", "content": "and?"}]}
    with pytest.raises(DataError, match=r"x\.jsonl:4: field 'completion': no assistant turn"):
        row_to_conversation(row, "x.jsonl:4")


@pytest.mark.parametrize("template", [PLAIN_CHATML, DEFAULT_SYSTEM], ids=["chatml", "default-system"])
def test_leading_assistant_turn_under_prefix_rendering(tiny_model_dir, template):
    """transformers refuses to render an empty conversation, which is what comes before a leading
    assistant turn; its span starts at its content (after any default system turn)."""
    conv = [{"role": "assistant", "content": "Hello, how can I help?"},
            {"role": "user", "content": "What is 2 + 3?"},
            {"role": "assistant", "content": "<answer>5</answer>"}]
    tok = _tok(tiny_model_dir, template)
    ex = render(tok, conv, method="prefix")
    assert trainable_text(tok, ex) == ["Hello, how can I help?<|im_end|>", "<answer>5</answer><|im_end|>"]
    if template == PLAIN_CHATML:  # the same as the tiny template's generation markers
        assert ex == render(_tok(tiny_model_dir), conv, method="generation")


def test_chat_template_errors_name_the_row(tiny_model_dir, tmp_path):
    """A template that raises (Mistral's "roles must alternate") or rows the prefix rendering
    cannot split end in a DataError naming the file and line, not a bare jinja2 error."""
    p = tmp_path / "chat.jsonl"
    ok = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    system = {"messages": [{"role": "system", "content": "Be brief."}] + ok["messages"]}
    p.write_text(json.dumps(ok) + "\n" + json.dumps(system) + "\n")
    convs = load_jsonl(p)
    tok = _tok(tiny_model_dir, ALTERNATING_ONLY)
    with pytest.raises(DataError, match=r"chat\.jsonl:2: cannot render this conversation \(system, user, assistant\) "
                                        r"with the chat template: Conversation roles must alternate"):
        build_examples(tok, convs, 64)
    # Conversations built in code are named by their index.
    with pytest.raises(DataError, match=r"^conversation 1: .*roles must alternate"):
        build_examples(tok, [list(c) for c in convs], 64)
    # Errors about the tokenizer, not a row, keep their own message.
    tok.chat_template = None
    with pytest.raises(DataError, match=r"^tokenizer has no chat_template"):
        build_examples(tok, convs, 64)


def test_truncation_inside_an_assistant_turn_trains_up_to_the_cut(tiny_model_dir):
    """overlong: truncate keeps the turn's tokens up to max_length and adds no end-of-turn token
    at the cut (that would teach the model to stop mid-answer); the last kept token has no target."""
    from thinkgym.sft_coldstart.packing import shift_targets

    tok = _tok(tiny_model_dir)
    conv = [{"role": "user", "content": "Count."}, {"role": "assistant", "content": " ".join(map(str, range(40)))}]
    full = render(tok, conv)
    (ex,), dropped = build_examples(tok, [conv], max_length=40, overlong="truncate")
    assert dropped == 0 and len(full["input_ids"]) > 40 and ex == {k: v[:40] for k, v in full.items()}
    assert ex["labels"][-1] == ex["input_ids"][-1] != tok.eos_token_id  # trained, and not a stop
    assert shift_targets(ex["labels"])[-1] == -100


# ----------------------------------------------------------------------------- eval split


def test_small_dataset_holds_out_an_eval_row_for_every_seed():
    """eval_fraction 0.05 of 10 rows (every 20th row): whether any row was held out depended on
    the seed's offset, and a run without eval rows measures no eval loss and writes no best/."""
    rows = list(range(10))
    for seed in range(40):
        train, held = split_holdout(rows, 0.05, seed)
        assert len(held) == 1 and sorted(train + held) == rows, seed
    # Datasets with more rows than k split as before: every k-th row, offset by the seed.
    assert split_holdout(list(range(100)), 0.05, 3)[1] == [17, 37, 57, 77, 97]
    assert split_holdout([0], 0.5, 0) == ([0], [])


# ----------------------------------------------------------------------------- packing


@pytest.mark.parametrize("attn", ["eager", "sdpa", "flex_attention"])
def test_packed_rows_give_each_token_its_loss_alone(tiny_model_dir, attn):
    """Per token, through the trainer's collate for two packed rows with padding: an example's
    loss packed with others equals its loss alone, for each attention implementation on CPU."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    from thinkgym.sft_coldstart.packing import collate_padded, model_inputs, pack_examples
    from thinkgym.sft_coldstart.train import SFTConfig, _collate

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation=attn).eval()
    r = random.Random(7)
    exs = []
    for _ in range(10):
        ids = [r.randrange(10, model.config.vocab_size) for _ in range(r.randint(2, 30))]
        k = r.randint(0, len(ids) - 1)
        exs.append({"input_ids": ids, "labels": [-100] * k + ids[k:]})
    bins = pack_examples(exs, 64, seed=0)
    mb = bins[:2]
    batch = _collate(SFTConfig(datasets=["x"], attn_implementation=attn, micro_batch_size=2), exs, mb, pad_id=0)
    assert batch["input_ids"].shape[0] == 2 and (batch["input_ids"] == 0).any()  # two rows, one padded
    with torch.no_grad():
        logits = model(**model_inputs(batch)).logits
        packed = F.cross_entropy(logits.transpose(1, 2), batch["targets"], ignore_index=-100, reduction="none")
        for row, b in enumerate(mb):
            off = 0
            for i in b:
                one = collate_padded(exs, [i], pad_id=0)
                alone = F.cross_entropy(model(**model_inputs(one)).logits[0], one["targets"][0], ignore_index=-100,
                                        reduction="none")
                n = len(exs[i]["input_ids"])
                assert torch.equal(batch["targets"][row, off : off + n], one["targets"][0])
                assert batch["targets"][row, off + n - 1] == -100  # the next example is never a target
                torch.testing.assert_close(packed[row, off : off + n], alone, atol=1e-5, rtol=1e-5)
                off += n


def test_attention_that_cannot_train_is_refused_by_the_config():
    """paged|eager needs continuous batching's paged cache and refuses a plain forward: the run
    would fail at its first step, after the data, model and DeepSpeed setup."""
    from thinkgym.sft_coldstart.train import SFTConfig

    with pytest.raises(ValueError, match=r"attn_implementation must be one of .*got 'paged\|eager'"):
        SFTConfig(datasets=["x"], attn_implementation="paged|eager").validate()
    SFTConfig(datasets=["x"], attn_implementation="flex_attention").validate()


# ----------------------------------------------------------------------------- training runs


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    p = tmp_path_factory.mktemp("sft-audit-data") / "add.jsonl"
    p.write_text("".join(json.dumps(x) + "\n" for x in _chat_rows(30)))
    return p


def _cfg(model, data, out, **kw):
    return _train_cfg(model, data, out, **{"eval_fraction": 0, "gradient_accumulation_steps": 1, "max_steps": 4,
                                           "eval_every": 0, "save_best": False, **kw})


def test_one_epoch_trains_every_example_and_saves_an_inference_config(tiny_model_dir, small_data, tmp_path):
    """30 rows in micro-batches of 3 (10 per epoch), 4 per step: one epoch is 3 steps, the last
    one running into the next epoch. Whole steps per epoch (2) never trained 6 of the 30 rows.
    final/'s config has the KV cache on again (training turns it off)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from thinkgym.sft_coldstart.train import _build_data, _epoch_micro_batches, train

    cfg = _cfg(tiny_model_dir, small_data, tmp_path / "run", packing=False, micro_batch_size=3,
               gradient_accumulation_steps=4, max_steps=0, epochs=1.0)
    res = train(cfg)
    examples = _build_data(cfg, AutoTokenizer.from_pretrained(tiny_model_dir))[0]
    epoch0 = _epoch_micro_batches(cfg, examples, 0, 0, 1)
    assert len(epoch0) == 10 and res["steps"] == math.ceil(10 / 4) == res["total_steps"]
    trained = {i for mb in epoch0[: res["steps"] * 4] for unit in mb for i in unit}
    assert trained == set(range(len(examples))) and len(examples) == 30

    assert json.loads(Path(res["final"], "config.json").read_text())["use_cache"] is True
    model = AutoModelForCausalLM.from_pretrained(res["final"])
    assert model(torch.tensor([[5, 6, 7]])).past_key_values is not None


def test_resume_with_other_checkpoint_settings_is_a_config_error(tiny_model_dir, small_data, tmp_path):
    """A checkpoint's weights and optimizer state are laid out by LoRA, frozen parts, precision
    and the ZeRO stage; resumed with others, DeepSpeed failed on a KeyError, a bare
    AssertionError or a missing file. Now a one-line error before the model loads."""
    from thinkgym.config import ConfigError
    from thinkgym.sft_coldstart.train import train

    out = tmp_path / "run"
    first = train(_cfg(tiny_model_dir, small_data, out, stop_after_steps=2))
    assert first["stop_reason"] == "stop_after_steps"
    for kw, msg in [({"lora_r": 4}, r"lora_r: 0 -> 4; lora_target_modules: \[\] -> \["),
                    ({"zero_stage": 0}, r"zero_stage: 2 -> 0"),
                    ({"dtype": "bfloat16"}, r"dtype: 'float32' -> 'bfloat16'"),
                    ({"freeze_embeddings": True}, r"freeze_embeddings: False -> True")]:
        with pytest.raises(ConfigError, match=r"resume: checkpoint .*step-2 was saved with other settings \(" + msg):
            train(_cfg(tiny_model_dir, small_data, out, resume=True, **kw))
    latest = out / "checkpoints" / "latest"
    latest.write_text("step-7")
    with pytest.raises(ConfigError, match=r"latest names checkpoint 'step-7', which is missing; .*\['step-2'\]"):
        train(_cfg(tiny_model_dir, small_data, out, resume=True))
    latest.write_text("step-2")
    res = train(_cfg(tiny_model_dir, small_data, out, resume=True))  # the same settings resume
    assert res["steps"] == 4 and res["stop_reason"] == "done"


# ----------------------------------------------------------------------------- tiny kit


@pytest.mark.parametrize("field", ["num_attention_heads", "num_key_value_heads"])
def test_tiny_config_with_no_heads_is_a_value_error(field):
    """It was a ZeroDivisionError (a traceback from ``thinkgym tiny-model --kv-heads 0``)."""
    from thinkgym.sft_coldstart.tiny import TinyConfig

    with pytest.raises(ValueError, match=f"{field} must be >= 1"):
        TinyConfig(**{field: 0}).validate()
