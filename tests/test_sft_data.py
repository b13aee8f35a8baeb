"""SFT data and packing: assistant-only labels, dataset errors, packed == unpacked."""

from __future__ import annotations

import json

import pytest

from thinkgym.sft_coldstart.data import (
    IGNORE_INDEX,
    DataError,
    build_examples,
    load_jsonl,
    render,
    trainable_text,
)

MULTI = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is 2 + 3?"},
    {"role": "assistant", "content": "<think>2 + 3 = 5</think>\n<answer>5</answer>"},
    {"role": "user", "content": "Add 10."},
    {"role": "assistant", "content": "<think>5 + 10 = 15</think>\n<answer>15</answer>"},
    {"role": "tool", "content": "checker: 15 is correct"},
    {"role": "assistant", "content": "<answer>15</answer>"},
]

# ChatML without {% generation %} markers, like most hub templates: exercises the fallback.
PLAIN_CHATML = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.mark.parametrize("method", ["generation", "prefix"])
def test_trainable_tokens_are_exactly_the_assistant_turns(tok, method):
    ex = render(tok, MULTI, method=method)
    want = [m["content"] + "<|im_end|>" for m in MULTI if m["role"] == "assistant"]
    assert trainable_text(tok, ex) == want
    # Everything else is masked: the decoded non-trainable text holds all prompt turns and headers.
    masked = tok.decode([t for t, lab in zip(ex["input_ids"], ex["labels"]) if lab == IGNORE_INDEX])
    for m in MULTI:
        if m["role"] != "assistant":
            assert m["content"] in masked
    assert masked.count("<|im_start|>assistant") == 3
    # Labels equal input ids where trainable.
    assert all(lab in (IGNORE_INDEX, t) for t, lab in zip(ex["input_ids"], ex["labels"]))


def test_prefix_fallback_on_template_without_generation_markers(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = PLAIN_CHATML
    ex = render(tok, MULTI)  # auto -> prefix
    assert trainable_text(tok, ex) == [m["content"] + "<|im_end|>" for m in MULTI if m["role"] == "assistant"]
    # Same token ids as the template-marker path of the original tokenizer.
    tok2 = AutoTokenizer.from_pretrained(tiny_model_dir)
    ex2 = render(tok2, MULTI, method="generation")
    assert ex == ex2


def test_jsonl_errors_name_file_line_and_field(tmp_path):
    p = tmp_path / "chat.jsonl"
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    bad_role = {"messages": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "x"}]}
    p.write_text(json.dumps(good) + "\n" + json.dumps(good) + "\n" + json.dumps(bad_role) + "\n")
    with pytest.raises(DataError, match=r"chat\.jsonl:3: field 'messages\[1\]\.role'"):
        load_jsonl(p)
    p.write_text(json.dumps(good) + "\n{not json\n")
    with pytest.raises(DataError, match=r"chat\.jsonl:2: invalid JSON"):
        load_jsonl(p)
    p.write_text(json.dumps({"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "x"}]}) + "\n")
    with pytest.raises(DataError, match=r":1: field 'messages\[0\]\.content': expected a string"):
        load_jsonl(p)
    p.write_text(json.dumps({"messages": [{"role": "user", "content": "only a question"}]}) + "\n")
    with pytest.raises(DataError, match="no assistant turn"):
        load_jsonl(p)
    p.write_text(json.dumps({"text": "x"}) + "\n")
    with pytest.raises(DataError, match=r":1: field 'messages' missing"):
        load_jsonl(p)
    # question/solution and prompt/completion rows: the row's own field is named, not the message it becomes
    p.write_text(json.dumps({"question": "q", "solution": ["a"]}) + "\n")
    with pytest.raises(DataError, match=r":1: field 'solution': expected a string, got \['a'\]"):
        load_jsonl(p)
    p.write_text(json.dumps({"question": 7, "solution": "a"}) + "\n")
    with pytest.raises(DataError, match=r":1: field 'question': expected a string, got 7"):
        load_jsonl(p)
    p.write_text(json.dumps({"prompt": "q", "completion": 5}) + "\n")
    with pytest.raises(DataError, match=r":1: field 'completion': expected a string or a message list, got 5"):
        load_jsonl(p)
    # prompt/completion rows are accepted
    p.write_text(json.dumps({"prompt": "q", "completion": "a"}) + "\n" + json.dumps(good) + "\n")
    assert [len(c) for c in load_jsonl(p)] == [2, 2]


def test_overlong_rows_dropped_or_truncated(tok):
    convs = [MULTI, MULTI[:3]]
    n_full = len(render(tok, MULTI)["input_ids"])
    short = len(render(tok, MULTI[:3])["input_ids"])
    ex, dropped = build_examples(tok, convs, max_length=short)
    assert dropped == 1 and len(ex) == 1
    ex, dropped = build_examples(tok, convs, max_length=short, overlong="truncate")
    assert dropped == 0 and [len(e["input_ids"]) for e in ex] == [short, short] and short < n_full


def test_task_source_worked_solutions(tok):
    from thinkgym.tasks import TASKS

    if "arithmetic" not in TASKS.names():
        pytest.skip("arithmetic task source not available")
    from thinkgym.sft_coldstart.data import task_conversations

    convs = task_conversations("arithmetic", 0, 5, seed=3)
    assert convs == task_conversations("arithmetic", 0, 5, seed=3)  # pure function of (seed, i)
    for conv in convs:
        assert [m["role"] for m in conv] == ["system", "user", "assistant"]
        ex = render(tok, conv)
        (trained,) = trainable_text(tok, ex)
        assert trained == conv[2]["content"] + "<|im_end|>"
        assert trained.startswith("<think>") and "</think>\n<answer>" in trained


# ----------------------------------------------------------------------------- packing


def _random_examples(n, vocab, seed=0):
    import random

    r = random.Random(seed)
    out = []
    for _ in range(n):
        L = r.randint(3, 40)
        ids = [r.randrange(10, vocab) for _ in range(L)]
        k = r.randint(1, L - 1)
        out.append({"input_ids": ids, "labels": [IGNORE_INDEX] * k + ids[k:]})
    return out


@pytest.mark.parametrize("explicit_mask", [False, True])
def test_packed_batch_equals_unpacked(tiny_model_dir, explicit_mask):
    import torch
    from transformers import AutoModelForCausalLM

    from thinkgym.sft_coldstart.packing import collate_packed, collate_padded, model_inputs, pack_examples, token_loss

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    exs = _random_examples(12, model.config.vocab_size)
    bins = pack_examples(exs, pack_length=128, seed=1)
    assert sorted(i for b in bins for i in b) == list(range(12))
    assert all(sum(len(exs[i]["input_ids"]) for i in b) <= 128 for b in bins)
    packed = collate_packed(exs, bins, pad_id=0, pad_to=130)  # padding segment at the end of each row
    with torch.no_grad():
        logits = model(**model_inputs(packed, explicit_mask)).logits
        packed_loss = token_loss(logits, packed["targets"]) / (packed["targets"] != IGNORE_INDEX).sum()
        total, count, worst = 0.0, 0, 0.0
        for r, b in enumerate(bins):
            off = 0
            for i in b:
                one = collate_padded(exs, [i], pad_id=0)
                lo = model(**model_inputs(one)).logits
                total += token_loss(lo, one["targets"]).item()
                count += int((one["targets"] != IGNORE_INDEX).sum())
                n = len(exs[i]["input_ids"])
                worst = max(worst, (lo[0] - logits[r, off : off + n]).abs().max().item())
                off += n
    assert abs(packed_loss.item() - total / count) < 1e-5
    assert worst < 1e-4


def test_packing_blocks_cross_attention(tiny_model_dir):
    """Changing one example must not change the logits of the example packed after it."""
    import torch
    from transformers import AutoModelForCausalLM

    from thinkgym.sft_coldstart.packing import collate_packed, model_inputs

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    a, b = _random_examples(2, model.config.vocab_size, seed=5)
    a2 = {"input_ids": [(t + 7) % model.config.vocab_size for t in a["input_ids"]], "labels": a["labels"]}
    n = len(a["input_ids"])
    with torch.no_grad():
        l1 = model(**model_inputs(collate_packed([a, b], [[0, 1]], 0))).logits[0, n:]
        l2 = model(**model_inputs(collate_packed([a2, b], [[0, 1]], 0))).logits[0, n:]
        # Control: without per-example positions/segments, the change does leak.
        ids = torch.tensor([a["input_ids"] + b["input_ids"]])
        ids2 = torch.tensor([a2["input_ids"] + b["input_ids"]])
        c1 = model(input_ids=ids, use_cache=False).logits[0, n:]
        c2 = model(input_ids=ids2, use_cache=False).logits[0, n:]
    assert torch.allclose(l1, l2, atol=1e-5)
    assert not torch.allclose(c1, c2, atol=1e-3)


def test_hf_dataset_on_disk(tmp_path):
    import datasets

    from thinkgym.sft_coldstart.data import load_source

    rows = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]} for i in range(3)]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    convs = load_source(f"hf:{tmp_path / 'ds'}")
    assert [c[1]["content"] for c in convs] == ["a0", "a1", "a2"]
    rows[2]["messages"][1]["content"] = None
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(DataError, match=r"bad\[train\] row 2: field 'messages\[1\]\.content'"):
        load_source(f"hf:{tmp_path / 'bad'}")


def test_sft_modules_import_light():
    import subprocess
    import sys

    code = ("import sys, thinkgym.sft_coldstart.cli, thinkgym.sft_coldstart.train, thinkgym.sft_coldstart.data, "
            "thinkgym.sft_coldstart.packing, thinkgym.sft_coldstart.tiny; "
            "print(sorted(m for m in ('torch', 'transformers', 'deepspeed', 'vllm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# ----------------------------------------------------------------------------- template edge cases


def test_prefix_trains_the_end_of_turn_marker_when_it_is_not_eos(tiny_model_dir):
    """A base model's eos (<|endoftext|>) is not what its chat template closes turns with
    (<|im_end|>): the marker must still be trained, or the model never learns to stop."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = PLAIN_CHATML
    tok.eos_token = "<|endoftext|>"
    ex = render(tok, MULTI, method="prefix")
    assert trainable_text(tok, ex) == [m["content"] + "<|im_end|>" for m in MULTI if m["role"] == "assistant"]


def test_prefix_trains_the_answers_first_token_when_it_merges_with_the_template(tiny_model_dir):
    """"Assistant: The" tokenizes as [..., ":", " The"]: the token that carries the template's
    space is the answer's first token and must be trained (as the generation mask does)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = (
        "{%- for m in messages -%}{%- if m['role'] == 'user' -%}{{ 'User: ' + m['content'] + '\n' }}"
        "{%- else -%}{{ 'Assistant: ' + m['content'] + '<|im_end|>\n' }}{%- endif -%}{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ 'Assistant: ' }}{%- endif -%}"
    )
    conv = [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "The sum is 5."}]
    ex = render(tok, conv)
    assert trainable_text(tok, ex) == [" The sum is 5.<|im_end|>"]


def test_generation_markers_with_whitespace_control_are_used(tiny_model_dir):
    """``{%- generation -%}`` is a generation marker too: auto must use it rather than fall back
    to prefix rendering, which this template (an end marker only after the last turn) breaks."""
    from transformers import AutoTokenizer

    from thinkgym.sft_coldstart.tiny import CHAT_TEMPLATE

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = (CHAT_TEMPLATE.replace("{% generation %}", "{%- generation -%}")
                         .replace("{% endgeneration %}", "{%- endgeneration -%}")
                         + "{%- if not add_generation_prompt -%}{{ '<|endoftext|>' }}{%- endif -%}")
    ex = render(tok, MULTI)
    assert trainable_text(tok, ex) == [m["content"] + "<|im_end|>" for m in MULTI if m["role"] == "assistant"]


ALPACA = (
    "{%- for m in messages -%}{%- if m['role'] == 'user' -%}{{ '### Instruction:\n' + m['content'] + '\n\n' }}"
    "{%- elif m['role'] == 'assistant' -%}{{ '### Response:\n' + m['content'] + '\n\n' }}{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '### Response:\n' }}{%- endif -%}"
)


def test_template_that_closes_turns_with_plain_text_gets_a_trained_eos(tiny_model_dir):
    """Alpaca-style templates end a response with blank lines only: an eos is inserted and
    trained after each assistant turn, or the model would never learn to stop."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = ALPACA
    conv = [m for m in MULTI if m["role"] in ("user", "assistant")]
    ex = render(tok, conv)
    assert trainable_text(tok, ex) == [m["content"] + tok.eos_token for m in conv if m["role"] == "assistant"]
    assert ex["input_ids"].count(tok.eos_token_id) == 3
    # Without an eos token the row is an error rather than a model that cannot stop.
    tok.eos_token = None
    with pytest.raises(DataError, match="never learn to stop"):
        render(tok, conv)


def test_end_of_turn_marker_outside_the_generation_markers_is_trained(tiny_model_dir):
    from transformers import AutoTokenizer

    from thinkgym.sft_coldstart.tiny import CHAT_TEMPLATE

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = CHAT_TEMPLATE.replace("{{ message['content'] + '<|im_end|>' }}{% endgeneration %}",
                                              "{{ message['content'] }}{% endgeneration %}{{ '<|im_end|>' }}")
    assert tok.chat_template != CHAT_TEMPLATE
    ex = render(tok, MULTI, method="generation")
    assert trainable_text(tok, ex) == [m["content"] + "<|im_end|>" for m in MULTI if m["role"] == "assistant"]
    assert ex == render(AutoTokenizer.from_pretrained(tiny_model_dir), MULTI, method="generation")


def test_generation_method_without_markers_is_an_error(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = PLAIN_CHATML
    # transformers returns an all-zero mask here: every row would be dropped as "nothing to train on".
    with pytest.raises(DataError, match=r"render_method 'generation' needs \{% generation %\} markers"):
        build_examples(tok, [MULTI], 512, method="generation")


@pytest.mark.parametrize("message, msg", [
    ({"role": "assistant", "content": ""}, r":1: field 'messages\[1\]\.content': empty assistant turn"),
    ({"role": "assistant", "content": " \n"}, r":1: field 'messages\[1\]\.content': empty assistant turn"),
    ({"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{}"}}]},
     r":1: field 'messages\[1\]\.content': empty assistant turn"),
    ({"role": "assistant", "content": "Calling f.", "tool_calls": [{"type": "function"}]},
     r":1: field 'messages\[1\]\.tool_calls': not supported"),
    ({"role": "assistant", "content": "5", "reasoning_content": "2 + 3 = 5"},
     r":1: field 'messages\[1\]\.reasoning_content': not supported"),
])
def test_assistant_turns_that_would_train_the_wrong_text_are_errors(tmp_path, message, msg):
    p = tmp_path / "chat.jsonl"
    p.write_text(json.dumps({"messages": [{"role": "user", "content": "What is 2 + 3?"}, message]}) + "\n")
    with pytest.raises(DataError, match=msg):
        load_jsonl(p)


def test_flash_attention_gets_a_micro_batch_as_one_packed_row():
    """transformers' flash-attention path separates packed examples by their position ids only
    in a batch of one row; with two rows it attends across each whole row."""
    from thinkgym.sft_coldstart.train import SFTConfig, _collate

    exs = [{"input_ids": [5] * n, "labels": [5] * n} for n in (3, 4, 2)]
    mb = [[0, 2], [1]]  # two packed bins: one micro-batch of micro_batch_size 2
    for attn in ("flash_attention_2", "kernels-community/flash-attn"):
        b = _collate(SFTConfig(datasets=["x"], attn_implementation=attn, micro_batch_size=2), exs, mb, pad_id=0)
        assert b["input_ids"].shape == (1, 9)
        assert b["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2, 3]]
        assert b["targets"].tolist() == [[5, 5, -100, 5, -100, 5, 5, 5, -100]]
    b = _collate(SFTConfig(datasets=["x"], attn_implementation="sdpa", micro_batch_size=2), exs, mb, pad_id=0)
    assert b["input_ids"].shape == (2, 5)  # mask-based attention: one row per bin, as before


@pytest.mark.parametrize("method", ["generation", "prefix"])
@pytest.mark.parametrize("j, text", [(1, "Print '<|im_end|>' in Python."), (2, "<think>x</think>\n<answer>5<|endoftext|></answer>"),
                                     (0, "Never write <|im_start|>.")])
def test_a_special_token_string_in_a_message_is_refused_naming_the_row(tok, method, j, text):
    """The chat template would render it as the token itself (a forged turn boundary, or a stop
    trained mid-answer), while the sampler sends such text as plain text."""
    conv = [dict(m) for m in MULTI[:3]]
    conv[j]["content"] = text
    with pytest.raises(DataError, match=rf"conversation 0: .*messages\[{j}\] \({conv[j]['role']}\) holds the "
                                        r"special-token string '<\|(im_end|endoftext|im_start)\|>'"):
        build_examples(tok, [conv], 512, method=method)
    conv[j]["content"] = text.replace("<|", "< |")  # the same text, no longer a token: trained as before
    assert build_examples(tok, [conv], 512, method=method)[0]
