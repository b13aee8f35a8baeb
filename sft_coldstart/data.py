"""SFT data: conversations from task sources or chat datasets, rendered with the model's chat
template, with labels on assistant tokens only.

A conversation is a list of ``{"role": str, "content": str}`` messages. An example is
``{"input_ids": [...], "labels": [...]}`` where ``labels[t]`` is ``input_ids[t]`` on assistant
tokens and ``-100`` everywhere else (system, user, tool / env feedback, role headers). A
``{prompt, completion}`` row's prompt is context, as in TRL: an assistant turn in it is not trained.

Assistant tokens come from the template's ``{% generation %}`` markers when it has them
(``return_assistant_tokens_mask``); otherwise from incremental prefix rendering: the text of
``messages[:i]`` + generation prompt is a prefix of the text of ``messages[:i+1]``, so the
assistant turn is the character span between the two, mapped to tokens by offsets. That works
for any template that renders a conversation as the concatenation of its turns. A trained turn
always ends on a special token (the template's end-of-turn marker, else an inserted eos), so
the model learns to stop.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

# The system turn of task-source conversations is the envs' default system prompt, so the SFT
# policy sees at RL and eval time exactly the prompt it was trained on.
from thinkgym.envs.core import DEFAULT_SYSTEM_PROMPT  # noqa: F401  (re-exported)
from thinkgym.jsonl import iter_jsonl
from thinkgym.tasks.base import show
from thinkgym.verifiers.format import FormatConfig, check_format

IGNORE_INDEX = -100
ROLES = ("system", "user", "assistant", "tool", "env", "ipython", "function", "developer")


Message = dict[str, str]


class Conversation(list):
    """A list of messages that remembers the dataset row it came from (``where``, for errors
    the chat template raises when it is rendered) and how many leading messages are context
    only (``context``: a prompt/completion row's prompt, whose assistant turns are not trained,
    as TRL's completion-only loss does). A plain list of messages works everywhere too."""

    def __init__(self, messages: Iterable[Message] = (), where: str = "", context: int = 0):
        super().__init__(messages)
        self.where, self.context = where, context


class DataError(ValueError):
    """A dataset row is malformed; the message names the file, line and field."""


# ----------------------------------------------------------------------------- validation


def validate_conversation(conv: Any, where: str, context: int = 0) -> Conversation:
    """Check ``conv`` is a list of role/content messages with an assistant turn after the first
    ``context`` messages (which are context only, see :class:`Conversation`)."""
    if not isinstance(conv, list) or not conv:
        raise DataError(f"{where}: field 'messages': expected a non-empty list of messages, got {show(conv)}")
    out = Conversation(where=where, context=context)
    for j, m in enumerate(conv):
        if not isinstance(m, dict):
            raise DataError(f"{where}: field 'messages[{j}]': expected an object with role and content, got {show(m)}")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise DataError(f"{where}: field 'messages[{j}].role': expected one of {list(ROLES)}, got {show(role)}")
        if not isinstance(content, str):
            raise DataError(f"{where}: field 'messages[{j}].content': expected a string, got {show(content)}")
        if role == "assistant" and not content.strip():
            # The turn would teach the model to answer with nothing but the end-of-turn token.
            raise DataError(f"{where}: field 'messages[{j}].content': empty assistant turn")
        dropped = [k for k in _UNRENDERED if m.get(k)]
        if dropped:
            # Only role and content reach the template: these would vanish from the trained turn.
            raise DataError(f"{where}: field 'messages[{j}].{dropped[0]}': not supported (only role and content are "
                            "rendered); put it into content")
        out.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in out[context:]):
        field_ = "completion" if context else "messages"
        raise DataError(f"{where}: field {field_!r}: no assistant turn, nothing to train on")
    return out


# Message fields that carry trainable text in some chat formats but are not rendered here.
_UNRENDERED = ("tool_calls", "function_call", "reasoning_content", "reasoning", "thinking")


def row_to_conversation(row: Any, where: str, messages_field: str = "messages") -> Conversation:
    """A dataset row -> conversation. Accepts ``{messages_field: [...]}``, ``{prompt, completion}``
    (strings or message lists) and ``{question, solution}``."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {show(row)}")
    if messages_field in row:
        return validate_conversation(row[messages_field], where)
    if "prompt" in row and "completion" in row:
        p, c = row["prompt"], row["completion"]
        for key, v in (("prompt", p), ("completion", c)):
            if not isinstance(v, (str, list)):
                raise DataError(f"{where}: field {key!r}: expected a string or a message list, got {show(v)}")
        prompt = [{"role": "user", "content": p}] if isinstance(p, str) else p
        completion = [{"role": "assistant", "content": c}] if isinstance(c, str) else c
        # The prompt is context: an assistant turn in it (an earlier answer, a draft) is not trained.
        return validate_conversation(prompt + completion, where, context=len(prompt))
    if "question" in row and "solution" in row:
        # Checked here: past this point the values are messages[0/1].content, not the row's fields.
        for key in ("question", "solution"):
            if not isinstance(row[key], str):
                raise DataError(f"{where}: field {key!r}: expected a string, got {show(row[key])}")
        return validate_conversation(
            [{"role": "user", "content": row["question"]}, {"role": "assistant", "content": row["solution"]}], where
        )
    raise DataError(
        f"{where}: field {messages_field!r} missing (also accepted: 'prompt'+'completion', 'question'+'solution'); "
        f"row has keys {sorted(row)}"
    )


# ----------------------------------------------------------------------------- sources


def load_jsonl(path: str | Path, messages_field: str = "messages") -> list[Conversation]:
    """Read a JSONL file of chat rows; a bad row raises :class:`DataError` naming file, line, field."""
    p = Path(path)
    convs = [row_to_conversation(row, where, messages_field) for where, row in iter_jsonl(p, DataError)]
    if not convs:
        raise DataError(f"{p}: no rows")
    return convs


def load_hf(spec: str, split: str = "train", messages_field: str = "messages") -> list[Conversation]:
    """Load a local HF dataset: a ``save_to_disk`` folder or any ``load_dataset`` path/name."""
    import datasets

    p = Path(spec)
    if p.is_dir() and ((p / "dataset_info.json").exists() or (p / "dataset_dict.json").exists()):
        ds = datasets.load_from_disk(str(p))
        if isinstance(ds, datasets.DatasetDict):
            ds = ds[split]
    else:
        ds = datasets.load_dataset(spec, split=split)
    return [row_to_conversation(row, f"{spec}[{split}] row {i}", messages_field) for i, row in enumerate(ds)]


def load_source(spec: str, messages_field: str = "messages") -> list[Conversation]:
    """``path.jsonl`` -> :func:`load_jsonl`; ``hf:NAME_OR_DIR[:SPLIT]`` -> :func:`load_hf`."""
    if spec.startswith("hf:"):
        name, _, split = spec[3:].partition(":")
        return load_hf(name, split or "train", messages_field)
    return load_jsonl(spec, messages_field)


def task_conversations(
    name: str,
    start: int,
    count: int,
    seed: int = 0,
    params: dict[str, Any] | None = None,
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
    require_solution_format: bool = True,
) -> list[Conversation]:
    """Items ``start .. start+count-1`` of task source ``name`` as (system, user, assistant)
    conversations whose assistant turn is the item's worked solution.

    The solution is trained on verbatim, so with ``require_solution_format`` every one must be
    in the completion format (see :func:`solution_format_problem`); otherwise a
    :class:`DataError` names the source, the failing items and how many fail. A dataset column
    named ``solution`` (MATH's prose worked solutions, say) lands in ``metadata.solution`` and
    would else be trained on as it is."""
    from thinkgym.tasks import make_task

    src = make_task(name, seed=seed, **(params or {}))
    convs = []
    bad: list[tuple[int, str, str]] = []  # (item index, why, solution)
    for i in range(start, start + count):
        item = src[i]
        sol = item["metadata"].get("solution")
        if not isinstance(sol, str) or not sol:
            raise DataError(f"task {name!r} item {i}: field 'metadata.solution' missing; this source has no worked solutions")
        if require_solution_format:
            why = solution_format_problem(sol)
            if why:
                bad.append((i, why, sol))
        convs.append(Conversation(item_conversation(item["question"], sol, system_prompt), where=f"task {name!r} item {i}"))
    if bad:
        first, why, sol = bad[0]
        shown = ", ".join(str(b[0]) for b in bad[:5]) + (", ..." if len(bad) > 5 else "")
        raise DataError(
            f"task {name!r} ({src!r}): {len(bad)} of {count} worked solutions (field 'metadata.solution', items "
            f"{shown}) are not in the completion format <think>...</think> then one answer in \\boxed{{}} or "
            f"<answer>...</answer>, so SFT would teach the model another format than the one it is graded on; item {first}: "
            f"{why}: {show(sol, 120)}. Convert the solutions to that format, or set require_solution_format: false "
            "to train on them as they are"
        )
    return convs


# What a worked solution must look like to be trained on: the format grader's structure (one
# non-empty think block at the start, then exactly one non-empty answer in \boxed{} or
# <answer>...</answer>), with text after the answer allowed: every answer grader reads such a
# completion, and how strict to be about trailing text is the env's format config to decide.
SOLUTION_FORMAT = FormatConfig(allow_text_after_answer=True)


def solution_format_problem(solution: str) -> str | None:
    """Why ``solution`` is not in the completion format (:data:`SOLUTION_FORMAT`), or None."""
    grade = check_format(solution, SOLUTION_FORMAT)
    # The first failed check is the cause: without a think block every later check fails too.
    return None if grade.score == 1.0 else grade.reason.split("; ")[0]


def item_conversation(question: str, solution: str, system_prompt: str | None = DEFAULT_SYSTEM_PROMPT) -> Conversation:
    conv = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return conv + [{"role": "user", "content": question}, {"role": "assistant", "content": solution}]


# ----------------------------------------------------------------------------- rendering


# The `{% generation %}` tag with any whitespace control, as transformers detects it.
_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")


def render(tokenizer: Any, conv: Conversation, max_length: int | None = None, method: str = "auto") -> dict[str, list[int]]:
    """Tokenize ``conv`` with the chat template; labels are -100 except on assistant tokens.

    ``method``: ``"generation"`` (template markers), ``"prefix"`` (incremental prefix rendering)
    or ``"auto"`` (markers when the template has them, else prefix). The first ``conv.context``
    messages (see :class:`Conversation`) are never trained.
    """
    method = _render_method(tokenizer, method)
    _refuse_special_strings(tokenizer, conv)
    if method == "generation":
        enc = tokenizer.apply_chat_template(
            conv, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        ids = list(enc["input_ids"])
        mask = list(enc["assistant_masks"])
        labels = [t if m else IGNORE_INDEX for t, m in zip(ids, mask)]
    else:
        ids, labels = _render_by_prefix(tokenizer, conv)
    context = getattr(conv, "context", 0)
    if any(m["role"] == "assistant" for m in conv[:context]):
        # Before _close_turns: a context turn gets no inserted eos either, as at inference.
        labels = _untrain_context(tokenizer, conv, context, ids, labels)
    ids, labels = _close_turns(tokenizer, ids, labels)
    if max_length is not None and len(ids) > max_length:
        ids, labels = ids[:max_length], labels[:max_length]
    return {"input_ids": ids, "labels": labels}


def _refuse_special_strings(tokenizer: Any, conv: Conversation) -> None:
    """A special-token string in a message (``<|im_end|>`` quoted in a question) would render as
    the real token: a turn boundary inside the turn, and in an assistant turn a stop the model
    learns to emit mid-answer. The sampler encodes such text as plain text
    (:func:`~thinkgym.sampler.types.chat_prompt_ids`), so training on the real token would also
    train on prompts it never sees: the row is refused instead."""
    from thinkgym.sampler.types import hide_special_strings
    from thinkgym.verifiers.extract import THINK_CLOSE, THINK_OPEN

    for j, m in enumerate(conv):
        _, hidden, _ = hide_special_strings(tokenizer, [m])
        if m["role"] == "assistant":  # a reasoning tokenizer's special think tags: the model writes them itself
            hidden = [h for h in hidden if h not in (THINK_OPEN, THINK_CLOSE)]
        if hidden:
            raise DataError(f"messages[{j}] ({m['role']}) holds the special-token string {hidden[0]!r}, which the chat "
                            "template would turn into the token itself; remove or rewrite it in this row")


def _render_method(tokenizer: Any, method: str) -> str:
    """``method`` with "auto" resolved; errors that concern the tokenizer, not a row."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise DataError("tokenizer has no chat_template; set one (e.g. tokenizer.chat_template = ...) before SFT")
    has_markers = bool(_GENERATION_TAG.search(tokenizer.chat_template))
    if method == "auto":
        return "generation" if has_markers else "prefix"
    if method == "generation" and not has_markers:
        # transformers would return an all-zero mask (a warning, no error): every row dropped.
        raise DataError("render_method 'generation' needs {% generation %} markers in the chat template; "
                        "use 'prefix' or 'auto' for this template")
    if method not in ("generation", "prefix"):
        raise ValueError(f"unknown render method {method!r}")
    return method


def _untrain_context(tokenizer: Any, conv: Conversation, n: int, ids: list[int], labels: list[int]) -> list[int]:
    """Labels with every token inside the rendered text of ``conv[:n]`` masked."""
    full = tokenizer.apply_chat_template(conv, tokenize=False)
    prompt = tokenizer.apply_chat_template(conv[:n], tokenize=False)
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    if not full.startswith(prompt) or list(enc["input_ids"]) != ids:
        raise DataError(f"chat template is not prefix-stable at message {n} (the completion changes how the "
                        "prompt renders), so the prompt's assistant turns cannot be told apart from the completion")
    return [IGNORE_INDEX if b <= len(prompt) else lab for (_, b), lab in zip(enc["offset_mapping"], labels)]


def _special_ids(tokenizer: Any) -> set[int]:
    ids = set(getattr(tokenizer, "all_special_ids", None) or ())
    for i, t in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if getattr(t, "special", False):
            ids.add(int(i))
    return ids


def _close_turns(tokenizer: Any, ids: list[int], labels: list[int]) -> tuple[list[int], list[int]]:
    """Every trained assistant turn must end on a special token, or the model never learns to
    stop. A turn that ends on text is closed by the special token the template puts right after
    it (trained too: markers that leave ``<|im_end|>`` outside), else by the tokenizer's eos,
    inserted (templates such as Alpaca's close a turn with plain text or nothing)."""
    special = _special_ids(tokenizer)
    ends = [k for k in range(len(ids)) if labels[k] != IGNORE_INDEX and (k + 1 == len(ids) or labels[k + 1] == IGNORE_INDEX)]
    ids, labels = list(ids), list(labels)
    for k in reversed(ends):  # from the end: inserting shifts only later positions
        if ids[k] in special:
            continue
        if k + 1 < len(ids) and ids[k + 1] in special:
            labels[k + 1] = ids[k + 1]
            continue
        eos = getattr(tokenizer, "eos_token_id", None)
        if eos is None:
            raise DataError("the chat template ends assistant turns without a special token and the tokenizer "
                            "has no eos token, so the model could never learn to stop; set tokenizer.eos_token")
        ids.insert(k + 1, eos)
        labels.insert(k + 1, eos)
    return ids, labels


def _render_by_prefix(tokenizer: Any, conv: Conversation) -> tuple[list[int], list[int]]:
    def text(msgs: Conversation, gen: bool) -> str:
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)

    full = text(conv, False)
    spans = []
    for i, m in enumerate(conv):
        if m["role"] != "assistant":
            continue
        # transformers renders no empty conversation: a leading assistant turn has no text before
        # it, and starts where its content is found (after any preamble such as a default system turn).
        before = text(conv[:i], True) if i else ""
        through = text(conv[: i + 1], False)
        if not full.startswith(before) or not full.startswith(through):
            raise DataError(
                f"chat template is not prefix-stable at message {i} (a later turn changes how earlier turns render); "
                "use a template with {% generation %} markers"
            )
        start, end = len(before), len(through)
        # Train from the content through what the template closes the turn with (<|im_end|>,
        # <|eot_id|>, ...: the model has to learn to emit it, and it is often not the tokenizer's
        # eos token), but not the whitespace that separates turns. Templates that trim the
        # content are matched by the trimmed text.
        content = m["content"]
        at = full.find(content, start, end)
        if at < 0:
            at = full.find(content.strip(), start, end)
        if at >= 0:
            start = at
        elif not i:
            raise DataError("the chat template does not render the leading assistant turn's content as it is, so "
                            "its start is unknown; use a template with {% generation %} markers")
        end = start + len(full[start:end].rstrip())
        spans.append((start, end))
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    labels = [IGNORE_INDEX] * len(ids)
    # A token that overlaps a span is trained (as transformers' generation mask does): a token
    # that merges the template's last character with the content's first is the answer's first token.
    for k, (a, b) in enumerate(enc["offset_mapping"]):
        if b > a and any(a < e and s < b for s, e in spans):
            labels[k] = ids[k]
    return ids, labels


def pretrain_example(tokenizer: Any, text: str, max_length: int | None = None) -> dict[str, list[int]]:
    """Plain next-token example: every token is trained; ends with the eos token."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    if max_length is not None:
        ids = ids[:max_length]
    return {"input_ids": ids, "labels": list(ids)}


def build_examples(
    tokenizer: Any,
    convs: Iterable[Conversation],
    max_length: int,
    overlong: str = "drop",
    method: str = "auto",
) -> tuple[list[dict[str, list[int]]], int]:
    """Render conversations; returns ``(examples, n_dropped)``. Overlong rows are dropped or
    truncated (``overlong``); rows left with no trainable token are dropped."""
    from jinja2 import TemplateError

    method = _render_method(tokenizer, method)  # its errors are not about one row
    out, dropped = [], 0
    for n, conv in enumerate(convs):
        try:
            ex = render(tokenizer, conv, None, method)
        except (DataError, TemplateError) as e:
            # The template's own checks (roles must alternate, no system role, ...) raise
            # TemplateError; either way the error names the row, which the message alone does not.
            where = getattr(conv, "where", "") or f"conversation {n}"
            roles = ", ".join(m["role"] for m in conv)
            raise DataError(f"{where}: cannot render this conversation ({roles}) with the chat template: {e}") from None
        if len(ex["input_ids"]) > max_length:
            if overlong == "drop":
                dropped += 1
                continue
            ex = {k: v[:max_length] for k, v in ex.items()}
        if all(t == IGNORE_INDEX for t in ex["labels"][1:]):
            dropped += 1
            continue
        out.append(ex)
    return out, dropped


def trainable_text(tokenizer: Any, example: dict[str, list[int]]) -> list[str]:
    """Decode each contiguous run of trainable tokens (for inspection and tests)."""
    runs: list[list[int]] = []
    prev = False
    for t, lab in zip(example["input_ids"], example["labels"]):
        on = lab != IGNORE_INDEX
        if on and not prev:
            runs.append([])
        if on:
            runs[-1].append(t)
        prev = on
    return [tokenizer.decode(r) for r in runs]


def iter_task_text(name: str, start: int, count: int, seed: int = 0, params: dict[str, Any] | None = None) -> Iterator[str]:
    """Plain text (question + worked solution) of task items, for tokenizer training and pretraining."""
    from thinkgym.tasks import make_task

    src = make_task(name, seed=seed, **(params or {}))
    for i in range(start, start + count):
        item = src[i]
        yield f"{item['question']}\n{item['metadata'].get('solution', '')}"


def split_holdout(convs: Sequence[Conversation], fraction: float, seed: int) -> tuple[list[Conversation], list[Conversation]]:
    """Deterministic shuffle-free split: every k-th row goes to the held-out set (k = 1/fraction,
    at most the row count, so that a non-zero fraction of two or more rows holds one out)."""
    if fraction <= 0 or len(convs) < 2:
        return list(convs), []
    # Without the cap, k > rows held out one row or none depending on the seed's offset, and a run
    # with no eval rows measures no eval loss and writes no best/, without a word.
    k = min(max(2, round(1 / fraction)), len(convs))
    train = [c for i, c in enumerate(convs) if (i + seed) % k]
    held = [c for i, c in enumerate(convs) if not (i + seed) % k]
    return train, held
