"""Rollout collection over real envs with the real vLLM sampler: token/mask alignment across
turns, logprobs against a teacher-forced forward, grouping, seeding, slow graders."""

from __future__ import annotations

import time

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("vllm")

from thinkgym.sampler import SamplingConfig, make_sampler  # noqa: E402
from thinkgym.sampler.rollout import EpisodeBatch, collect_rollouts  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


@pytest.fixture(scope="module")
def sampler(tiny_model_dir):
    s = make_sampler("vllm", tiny_model_dir, max_model_len=1024, num_threads=1)
    yield s
    s.close()


@pytest.fixture(scope="module")
def multi(sampler):
    return collect_rollouts(
        "thinkgym/CountdownRetry-v0", sampler, indices=[0, 1], group_size=3,
        cfg=SamplingConfig(max_tokens=24, seed=1),
    )


def runs(mask):
    """(start, end) of each run of 1s."""
    out, start = [], None
    for i, m in enumerate(list(mask) + [0]):
        if m and start is None:
            start = i
        if not m and start is not None:
            out.append((start, i))
            start = None
    return out


def test_multi_turn_masks_and_tokens(sampler, multi: EpisodeBatch):
    tok = sampler.tokenizer
    assert len(multi) == 6 and [len(g) for g in multi.groups()] == [3, 3]
    assert [e.group_id for e in multi] == [0, 0, 0, 1, 1, 1] and [e.index for e in multi] == [0, 0, 0, 1, 1, 1]
    # The random model never solves countdown: every episode uses all 3 turns.
    assert all(e.num_turns == 3 and e.truncated and len(e.grades) == 3 for e in multi)
    for e in multi:
        assert len(e.input_ids) == len(e.loss_mask) == len(e.old_logprobs)
        assert e.loss_mask[: e.prompt_len] == [0] * e.prompt_len
        assert e.completion_len == sum(e.loss_mask)
        segs = runs(e.loss_mask)
        assert len(segs) == e.num_turns  # one sampled run per turn; feedback in between is masked
        # max_tokens caps each turn: overlong shaping reads the longest turn, not the total
        assert e.turn_lens == [b - a for a, b in segs] and e.longest_turn == max(e.turn_lens) <= 24
        for (a, b), text in zip(segs, e.texts):
            assert tok.decode(e.input_ids[a:b], skip_special_tokens=True) == text
        masked_out = tok.decode([t for t, m in zip(e.input_ids, e.loss_mask) if not m], skip_special_tokens=False)
        assert masked_out.count("That is not correct yet") == 2
        assert all(lp == 0.0 for lp, m in zip(e.old_logprobs, e.loss_mask) if not m)
        # The token sequence reads as the chat-template rendering of the conversation (compared
        # without special tokens: the random model samples some, which message texts drop).
        full = tok.apply_chat_template(e.messages, tokenize=False)
        full = tok.decode(tok.encode(full, add_special_tokens=False), skip_special_tokens=True)
        seq = tok.decode(e.input_ids, skip_special_tokens=True)
        assert full.startswith(seq) and full[len(seq) :] in ("", "\n")
        assert [m["role"] for m in e.messages][-5:] == ["assistant", "user", "assistant", "user", "assistant"]


def test_multi_turn_logprobs_match_forward(tiny_model_dir, multi):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()
    for e in list(multi)[:3]:
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([e.input_ids])).logits[0].float(), -1)
        ids = torch.tensor(e.input_ids)
        ref = torch.cat([torch.zeros(1), lp[:-1].gather(1, ids[1:, None])[:, 0]])
        m = torch.tensor(e.loss_mask, dtype=torch.bool)
        assert torch.allclose(ref[m], torch.tensor(e.old_logprobs)[m], atol=1e-4)


def test_seeded_and_grouped(sampler, multi):
    again = collect_rollouts(
        "thinkgym/CountdownRetry-v0", sampler, indices=[0, 1], group_size=3,
        cfg=SamplingConfig(max_tokens=24, seed=1),
    )
    assert [e.input_ids for e in again] == [e.input_ids for e in multi]
    g0 = multi.groups()[0]
    assert len({tuple(e.input_ids) for e in g0}) == 3  # members sample differently
    assert len({tuple(e.input_ids[: e.prompt_len]) for e in g0}) == 1  # from the same prompt


def test_single_turn_batch_helpers(sampler):
    b = collect_rollouts(
        "thinkgym/Arithmetic-v0", sampler, indices=[3, 4, 5], group_size=2,
        cfg=SamplingConfig(max_tokens=16, seed=0, stop=["</answer>"]), max_turns=1,
    )
    assert all(e.num_turns == 1 and e.terminated for e in b)
    t = b.to_tensors(pad_id=sampler.tokenizer.pad_token_id)
    T = max(len(e.input_ids) for e in b)
    assert t["input_ids"].shape == (6, T) and t["loss_mask"].shape == (6, T)
    assert int(t["attention_mask"].sum()) == sum(len(e.input_ids) for e in b)
    assert int(t["loss_mask"].sum()) == sum(e.completion_len for e in b)
    m = b.metrics()
    assert m["episodes"] == 6 and m["infra_errors"] == 0
    assert m["mean_reward"] == pytest.approx(sum(e.reward for e in b) / 6)
    assert 0.0 <= m["format_rate"] <= 1.0 and m["mean_completion_len"] > 0
    assert m["truncation_rate"] == pytest.approx(sum(e.finish_reason == "length" for e in b) / 6)
    assert b.rewards.shape == (6,)


def test_slow_grade_does_not_stall_generation(sampler):
    """One episode's env step sleeps; the other episodes go on through their turns meanwhile."""
    import gymnasium

    from thinkgym.envs import register_envs

    register_envs()
    SLOW = 4.0

    def slow_env():
        env = gymnasium.make("thinkgym/CountdownRetry-v0").unwrapped
        step = env.step

        def slow_step(action):
            if env._index == 0:
                time.sleep(SLOW)
            return step(action)

        env.step = slow_step
        return env

    class Recording:  # a real sampler, with each generate call's batch size recorded
        def __init__(self, inner):
            self.inner, self.tokenizer, self.calls = inner, inner.tokenizer, []
            self.max_model_len = inner.max_model_len

        def generate(self, prompts, cfg, seeds=None):
            start = time.perf_counter()
            out = self.inner.generate(prompts, cfg, seeds=seeds)
            self.calls.append((start, time.perf_counter(), len(prompts)))
            return out

    rec = Recording(sampler)
    t0 = time.perf_counter()
    b = collect_rollouts([slow_env, slow_env], rec, indices=[0, 1], group_size=2,
                         cfg=SamplingConfig(max_tokens=8, seed=2), regroup_s=0.2)
    assert all(e.num_turns == 3 for e in b)
    _, first_end, n_first = rec.calls[0]
    assert n_first == 4  # turn 1 batches every episode
    # While the slow group's first grade is still running, the fast group is already being
    # generated again (turns 2 and 3), in batches without the slow episodes.
    early = [n for start, _, n in rec.calls[1:] if start - first_end < SLOW]
    assert early and all(n <= 2 for n in early)
    assert elapsed_ok(t0, SLOW)
    assert [e.reward for e in b] == [e.turn_rewards[-1] for e in b]


def elapsed_ok(t0, slow):
    # Three slow turns run one after another; the fast group adds no full turn of waiting.
    return time.perf_counter() - t0 < 3 * slow + 30


def test_bad_arguments(sampler):
    cfg = SamplingConfig(max_tokens=4)
    with pytest.raises(ValueError):
        collect_rollouts(["thinkgym/Arithmetic-v0"] * 2, sampler, indices=[0], group_size=1, cfg=cfg)
    with pytest.raises(ValueError):
        collect_rollouts("thinkgym/Arithmetic-v0", sampler, indices=[0], group_size=0, cfg=cfg)
    with pytest.raises(TypeError):
        collect_rollouts([object()], sampler, indices=[0], group_size=1, cfg=cfg)


def test_each_distinct_prompt_is_templated_once(sampler, monkeypatch):
    """Members of a group usually share their prompt (templated once), but an env may give each
    member its own (here: by reset seed); no member may get another's prompt."""
    import gymnasium

    from thinkgym.envs import register_envs
    from thinkgym.sampler import rollout
    from thinkgym.sampler.types import chat_prompt_ids, mix_seed

    register_envs()
    calls = []

    def counting(tok, messages, **kw):
        calls.append(repr(messages))
        return chat_prompt_ids(tok, messages, **kw)

    monkeypatch.setattr(rollout, "chat_prompt_ids", counting)

    def varied_env():
        env = gymnasium.make("thinkgym/Arithmetic-v0").unwrapped
        reset = env.reset

        def varied_reset(seed=None, options=None):
            obs, info = reset(seed=seed, options=options)
            msgs = [{"role": "system", "content": f"variant {seed % 2}"}, {"role": "user", "content": obs}]
            return obs, {**info, "messages": msgs}

        env.reset = varied_reset
        return env

    b = collect_rollouts([varied_env, "thinkgym/Arithmetic-v0"], sampler, indices=[0, 1], group_size=4,
                         cfg=SamplingConfig(max_tokens=4, seed=3), max_turns=1)
    question = gymnasium.make("thinkgym/Arithmetic-v0").unwrapped.source[0]["question"]
    seen = set()
    for e in b:
        prompt = e.input_ids[:e.prompt_len]
        if e.group_id == 0:  # the member's own variant, by its reset seed
            v = mix_seed(3, 0, e.member) % 2
            seen.add(v)
            msgs = [{"role": "system", "content": f"variant {v}"}, {"role": "user", "content": question}]
            assert prompt == chat_prompt_ids(sampler.tokenizer, msgs)
        else:
            assert prompt == b.episodes[4].input_ids[:b.episodes[4].prompt_len]
    assert seen == {0, 1}
    assert len(calls) == len(set(calls)) == 3  # two variants of item 0, one prompt for item 1


def test_a_sampler_that_drops_logprobs_asked_for_is_an_error(sampler):
    """A backend outside the project (a plugin sampler, a server) that ignores ``logprobs``:
    stood in for by the real vLLM sampler with its logprobs removed. Zeros in their place made
    every truncated-IS weight exp(learner logprob) without a word."""
    from dataclasses import replace

    class DropsLogprobs:
        backend = "no-logprobs"
        tokenizer = sampler.tokenizer

        def generate(self, prompts, cfg, seeds=None):
            outs = sampler.generate(prompts, cfg, seeds=seeds)
            return [[replace(c, logprobs=None) for c in g] for g in outs]

    cfg = SamplingConfig(max_tokens=8, seed=0, logprobs=True)
    b = collect_rollouts("thinkgym/Arithmetic-v0", sampler, indices=[0], group_size=2, cfg=cfg, max_turns=1)
    assert all(any(lp != 0.0 for lp in e.old_logprobs) for e in b)  # the real sampler's are there
    with pytest.raises(RuntimeError, match="no-logprobs sampler returned no logprobs"):
        collect_rollouts("thinkgym/Arithmetic-v0", DropsLogprobs(), indices=[0], group_size=2, cfg=cfg, max_turns=1)
    # Not asked for: none expected, none required.
    collect_rollouts("thinkgym/Arithmetic-v0", DropsLogprobs(), indices=[0], group_size=2,
                     cfg=replace(cfg, logprobs=False), max_turns=1)
