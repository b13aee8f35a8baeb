"""Gymnasium environments over task sources and graders.

The observation is the rendered user prompt (text) and the action is the model's completion
(text). ``info`` carries the chat messages, the item and the grade breakdown, so a rollout
collector can work from chat messages while Gymnasium tooling sees plain strings.

* :class:`SingleTurnEnv`: one completion, graded, episode over.
* :class:`MultiTurnEnv`: a wrong answer gets feedback (the grader's reason, e.g. failing tests)
  and another try; ends on success (terminated) or after ``max_turns`` (truncated).
* :class:`ToolEnv`: the model may call a calculator with ``<tool>EXPR</tool>`` and gets
  ``<result>VALUE</result>`` back; ends when it gives an ``<answer>`` or at the turn limit.
"""

from __future__ import annotations

import copy
import numbers
import re
from collections.abc import Mapping
from typing import Any, Callable, SupportsFloat

import gymnasium as gym
from gymnasium.error import ResetNeeded

from thinkgym.envs.calculator import calculate
from thinkgym.envs.spaces import TextSpace
from thinkgym.tasks import Item, TaskSource, make_task
from thinkgym.verifiers import Grade, GraderSpec, get_grader
from thinkgym.verifiers.base import accepted_kwargs, check_kwargs
from thinkgym.verifiers.extract import find_tag_contents

DEFAULT_SYSTEM_PROMPT = (
    "You are a careful problem solver. First think through the problem step by step inside "
    "<think> </think>. Then give only the final answer inside <answer> </answer>."
)

TOOL_SYSTEM_PROMPT = (
    "You are a careful problem solver with a calculator. Think step by step inside <think> </think>. "
    "To use the calculator, end your message with <tool>EXPRESSION</tool> (numbers, + - * / // % ** "
    "and parentheses); the result comes back as <result>VALUE</result>. When you are sure, give only "
    "the final answer inside <answer> </answer>."
)

MAX_TEXT = 1 << 20  # characters; bounds both prompts and completions
MAX_RESULT_CHARS = 2000  # per tool result: a tool that answers with a book must not flood the context


_TIMING_KEYS = frozenset({"elapsed_s", "time_s"})


def _drop_timings(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _drop_timings(v) for k, v in x.items() if k not in _TIMING_KEYS}
    if isinstance(x, list):
        return [_drop_timings(v) for v in x]
    return x


def _positive_int(name: str, value: Any) -> int:
    """``value`` as an int >= 1; bools and floats are refused rather than truncated or misread."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):  # ints and numpy integers
        raise TypeError(f"{name} must be a positive int, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def _mapping(name: str, value: Any) -> dict[str, Any]:
    """``value`` (a mapping or None) as a new dict; a list of pairs or a string is refused
    rather than half-read by ``dict()`` or rejected from deep inside a ``**`` call."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"{name} must be a dict or None, got {type(value).__name__} {value!r:.80}")
    return dict(value)


def _check_grader_kwargs(grader: str, kwargs: dict[str, Any], what: str) -> None:
    """Refuse, as ``grade()`` and ``thinkgym grade`` do, a keyword argument ``grader`` does not read
    or a value of the wrong kind: ignored, a typo would change nothing; passed, a wrong kind would
    make every step an infrastructure error."""
    bad = check_kwargs(grader, kwargs)
    if bad is not None:
        raise ValueError(f"{what}: bad argument {bad[0]!r}: {bad[1]}")


def _grade_info(g: Grade) -> dict[str, Any]:
    # Wall-clock timings are left out of the transition so that a seeded step is reproducible
    # (Gymnasium's checker compares infos); they stay available on ``env.last_grade``.
    return _drop_timings(g.to_dict())


class TaskEnv(gym.Env[str, str]):
    """Shared reset/grading logic; subclasses define what a step does.

    ``grader_kwargs`` are checked when the env is built, against ``grader`` or every grader the
    task's items choose, and an item's own grader and ``grader_kwargs`` at its reset: a key the
    grader does not read, or a value of the wrong kind, is a ``ValueError`` naming the key, as in
    ``grade()`` and ``thinkgym grade``. A grader that fails at a step gives reward 0.0 (Gymnasium
    needs a float) with ``info["infra_error"] = True``: leave such steps out, not count them wrong.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 1}

    def __init__(
        self,
        task: str | TaskSource,
        *,
        task_params: dict[str, Any] | None = None,
        grader: str | None = None,
        grader_kwargs: dict[str, Any] | None = None,
        seed: int = 0,
        system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
        size: int | None = None,
        render_mode: str | None = None,
    ) -> None:
        if isinstance(task, TaskSource):
            if task_params or size is not None:
                raise ValueError("task_params/size apply to a task name, not to a TaskSource instance")
            self.source = task
        elif isinstance(task, str):
            if size is not None:
                size = _positive_int("size", size)
            self.source = make_task(task, seed=seed, size=size, **_mapping("task_params", task_params))
        else:
            raise TypeError(f"task must be a registered task name or a TaskSource, got {type(task).__name__}")
        if len(self.source) == 0:
            raise ValueError(f"task {self.source.name!r} has no items")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or one of {self.metadata['render_modes']}, got {render_mode!r}")
        self.task_name = self.source.name or type(self.source).__name__
        if grader is not None and not isinstance(grader, str):
            raise TypeError(f"grader must be a grader name or None, got {type(grader).__name__} {grader!r:.80}")
        self.grader_name = grader
        # Fail at construction on an unknown grader, not mid-rollout.
        get_grader(grader or self.source.grader)
        self.grader_kwargs = _mapping("grader_kwargs", grader_kwargs)
        # Against every grader the items may use (they may each choose theirs unless ``grader`` is set).
        for name in sorted({grader} if grader else {self.source.grader, *self.source.graders()}):
            _check_grader_kwargs(name, self.grader_kwargs, "grader_kwargs")
        if system_prompt is not None and not isinstance(system_prompt, str):
            raise TypeError(f"system_prompt must be a str or None, got {type(system_prompt).__name__}")
        self.system_prompt = system_prompt
        self.render_mode = render_mode
        self.observation_space = TextSpace(MAX_TEXT)
        self.action_space = TextSpace(MAX_TEXT)
        self.last_grade: Grade | None = None
        self._item: Item | None = None
        self._index = -1
        self._messages: list[dict[str, str]] = []
        self._turn = 0
        self._done = False

    # -- reset -------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        options = _mapping("options", options)
        unknown = sorted(set(options) - {"index"})
        if unknown:
            raise ValueError(f"unknown reset option(s) {unknown}; known: ['index']")
        n = len(self.source)
        i = options.get("index")
        if "index" in options:
            if isinstance(i, bool) or not isinstance(i, numbers.Integral):  # ints and numpy integers only
                raise TypeError(f"options['index'] must be an int, got {type(i).__name__} {i!r}")
            i = int(i)
            if not 0 <= i < n:
                raise IndexError(f"options['index'] = {i} out of range for task {self.task_name!r} (size {n})")
        # Seeded only once the options are known good: a refused reset leaves the RNG as it was.
        super().reset(seed=seed)
        if i is None:
            i = int(self.np_random.integers(n))
        item = self.source[i]
        try:  # a bad grading choice in the item fails here, not as an error grade at every step
            name, kwargs = self._grading(item)
            get_grader(name)
            _check_grader_kwargs(name, kwargs, "grader_kwargs")
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"task {self.task_name!r}, item {i}: {e}") from None
        self._item = item
        self._index = i
        self._turn = 0
        self._done = False
        self.last_grade = None
        self._messages = []
        if self.system_prompt:
            self._messages.append({"role": "system", "content": self.system_prompt})
        prompt = self._observation(self.render_prompt(self._item), f"the prompt of item {i}")
        self._messages.append({"role": "user", "content": prompt})
        info = {
            "messages": copy.deepcopy(self._messages),
            "item": copy.deepcopy(self._item),
            "index": i,
            "task": self.task_name,
            "turn": 0,
        }
        return prompt, info

    def _observation(self, text: str, what: str) -> str:
        """``text`` if the observation space holds it; a clear error rather than an observation
        that a vector env, a checker or a replay buffer would reject later."""
        if not self.observation_space.contains(text):
            size = f"{len(text)} characters" if isinstance(text, str) else f"a {type(text).__name__}"
            raise ValueError(
                f"{what} is {size}; the observation space allows a str of at most {self.observation_space.max_length}"
            )
        return text

    def render_prompt(self, item: Item) -> str:
        """The user message for ``item`` (the question as is)."""
        return item["question"]

    # -- grading -----------------------------------------------------------------------------
    def _grading(self, item: Item) -> tuple[str, dict[str, Any]]:
        """The grader name and keyword arguments for ``item``: the env's ``grader`` if set, else the
        item's own; the item's ``grader_kwargs`` under the env's ``grader_kwargs``."""
        md = item["metadata"]
        own = md.get("grader") or self.source.grader
        name = self.grader_name or own
        kwargs = _mapping("the item's metadata grader_kwargs", md.get("grader_kwargs"))
        if name != own:
            # The item's arguments are for its own grader: another one that declares what it reads
            # gets only those (countdown's exactly_once means nothing to the format grader).
            known = accepted_kwargs(name)
            if known is not None:
                kwargs = {k: v for k, v in kwargs.items() if k in known}
        return name, {**kwargs, **self.grader_kwargs}

    @property
    def grader(self) -> GraderSpec:
        assert self._item is not None
        return get_grader(self._grading(self._item)[0])

    def grade(self, completion: str) -> Grade:
        assert self._item is not None
        name, kwargs = self._grading(self._item)
        return get_grader(name)(completion, self._item["answer"], **kwargs)

    # -- step --------------------------------------------------------------------------------
    def _begin_step(self, action: Any) -> int:
        """Checks ``action`` and returns this step's turn number.

        The episode changes only in :meth:`_finish_step`: a step that raises (a bad action, a
        tool or ``feedback_fn`` that fails) leaves it as it was, so the step can be retried
        without a duplicated assistant turn or a used-up attempt.
        """
        if self._item is None:
            raise ResetNeeded("call reset() before step()")
        if self._done:
            raise ResetNeeded("the episode is over; call reset() before step()")
        if not isinstance(action, str):
            raise TypeError(f"action must be the completion text (str), got {type(action).__name__}")
        if not self.action_space.contains(action):
            raise ValueError(
                f"action is {len(action)} characters; the action space allows at most {self.action_space.max_length}"
            )
        return self._turn + 1

    def _finish_step(
        self, action: str, g: Grade, feedback: str | None, terminated: bool, truncated: bool
    ) -> tuple[str, SupportsFloat, bool, bool, dict[str, Any]]:
        done = terminated or truncated
        # Checked before anything changes, so that a refused step can be retried.
        obs = "" if done else self._observation(feedback or "", "the feedback")
        self._turn += 1
        self._messages.append({"role": "assistant", "content": action})
        self.last_grade = g
        self._done = done
        if feedback is not None and not done:
            self._messages.append({"role": "user", "content": feedback})
        # ``index`` and ``task`` as at reset: a vector env's step infos then say which item each
        # reward belongs to, whatever sub-env was autoreset when.
        info = {
            "grade": _grade_info(g),
            "infra_error": g.score is None,
            "messages": copy.deepcopy(self._messages),
            "feedback": None if done else feedback,
            "turn": self._turn,
            "index": self._index,
            "task": self.task_name,
        }
        reward = 0.0 if g.score is None else float(g.score)
        return obs, reward, terminated, truncated, info

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        return "\n\n".join(f"[{m['role']}]\n{m['content']}" for m in self._messages)


class SingleTurnEnv(TaskEnv):
    """One prompt, one completion, one grade."""

    #: Every env has it, so code that sizes episodes reads ``env.unwrapped.max_turns`` for any env.
    max_turns: int = 1

    def step(self, action: str) -> tuple[str, SupportsFloat, bool, bool, dict[str, Any]]:
        self._begin_step(action)
        return self._finish_step(action, self.grade(action), None, True, False)


def _failing_cases(g: Grade, item: Item, limit: int = 2) -> list[str]:
    """Lines describing the first failing *public* code test cases (input, expected, what
    happened), then how many hidden ones failed.

    Only the cases listed in ``item["metadata"]["public_tests"]`` (indices) are ever shown: a
    feedback that quoted every failing case with its expected value would let a lookup table of
    quoted cases pass all of them within a few turns. Without that list every case is hidden.
    """
    cases = g.details.get("cases") if isinstance(g.details, dict) else None
    tests = item.get("answer")
    if not isinstance(cases, list) or not isinstance(tests, dict) or not isinstance(tests.get("cases"), list):
        return []
    public = set((item.get("metadata") or {}).get("public_tests") or ())
    out, hidden_failed = [], 0
    for i, (res, case) in enumerate(zip(cases, tests["cases"])):
        if not isinstance(res, dict) or res.get("passed"):
            continue
        if i not in public:
            hidden_failed += 1
            continue
        if len(out) >= limit:
            continue
        if tests.get("type") == "function":
            args = ", ".join(repr(a) for a in case.get("args", []))
            line = f"{tests.get('entry_point')}({args}) should return {case.get('expected')!r}"
            got = res.get("got") or res.get("error") or res.get("status")
        else:
            line = f"for input {case.get('stdin')!r} the output should be {case.get('expected_stdout')!r}"
            # What the program printed (possibly empty), not just the status "wrong_answer".
            got = repr(res["got"]) if isinstance(res.get("got"), str) else res.get("error") or res.get("status")
        out.append(f"Test {i} failed: {line}; got: {str(got)[:300]}")
    if hidden_failed:
        out.append(f"{hidden_failed} hidden test{'s' if hidden_failed > 1 else ''} failed.")
    return out


def default_feedback(g: Grade, item: Item) -> str:
    """What a wrong attempt is told: the grader's reason and, for code, the failing tests."""
    if g.score is None:
        return "The answer could not be checked this time. Please try again."
    parts = [f"That is not correct yet (score {g.score:.2f})."]
    cases = g.details.get("cases") if isinstance(g.details, dict) else None
    reason = g.reason
    if isinstance(cases, list) and cases:
        # The code grader's reason names the first failing case, hidden ones included, with the
        # error the candidate raised there: ``raise ValueError(repr(args))`` would read a hidden
        # input back. Only the count is told; public cases are detailed below.
        passed = sum(isinstance(c, dict) and bool(c.get("passed")) for c in cases)
        reason = f"{passed}/{len(cases)} cases passed"
    if reason:
        parts.append(f"Reason: {reason}.")
    parts += _failing_cases(g, item)
    parts.append("Try again: think inside <think> </think>, then give your final answer.")
    return "\n".join(parts)


class MultiTurnEnv(TaskEnv):
    """Retry with feedback until the answer is right or ``max_turns`` attempts were made.

    Each step's reward is that attempt's score. ``success_score`` is the score that ends the
    episode as solved (1.0: fully right; lower it for partial-credit graders).
    """

    def __init__(
        self,
        task: str | TaskSource,
        *,
        max_turns: int = 3,
        success_score: float = 1.0,
        feedback_fn: Callable[[Grade, Item], str] = default_feedback,
        **kwargs: Any,
    ) -> None:
        self.max_turns = _positive_int("max_turns", max_turns)
        if isinstance(success_score, bool) or not isinstance(success_score, numbers.Real) or not 0.0 <= success_score <= 1.0:
            raise ValueError(f"success_score must be a number in [0, 1], got {success_score!r}")
        if not callable(feedback_fn):
            raise TypeError(f"feedback_fn must be callable, got {type(feedback_fn).__name__}")
        super().__init__(task, **kwargs)
        self.success_score = float(success_score)
        self.feedback_fn = feedback_fn

    def step(self, action: str) -> tuple[str, SupportsFloat, bool, bool, dict[str, Any]]:
        turn = self._begin_step(action)
        g = self.grade(action)
        if g.score is not None and g.score >= self.success_score:
            return self._finish_step(action, g, None, True, False)
        if turn >= self.max_turns:
            return self._finish_step(action, g, None, False, True)
        assert self._item is not None
        feedback = self.feedback_fn(g, self._item)
        if not isinstance(feedback, str):  # it becomes the observation and a user message
            raise TypeError(f"feedback_fn must return a str, got {type(feedback).__name__}")
        return self._finish_step(action, g, feedback, False, False)


# Whatever the graders' extraction takes as an answer channel ends the episode: <answer>,
# \boxed and \fbox (a bare \fbox{42} was otherwise read as "no answer" and never graded).
_ANSWER_OPEN_RE = re.compile(r"(?i:<answer>)|\\boxed|\\fbox")
# Any case, as the graders' extraction finds it: "</THINK>" ends the thinking for them too.
_THINK_CLOSE_RE = re.compile(re.escape("</think>"), re.IGNORECASE)


class ToolEnv(TaskEnv):
    """Calculator tool use: ``<tool>EXPR</tool>`` gets ``<result>VALUE</result>``; ``<answer>`` ends it.

    Tool calls are read from the text after the last ``</think>``, in any case (the whole text if
    there is none). Tool turns are not graded for correctness: their reward is 0 and their grade says so.
    Each result is cut to ``max_result_chars``.
    """

    def __init__(
        self,
        task: str | TaskSource,
        *,
        max_turns: int = 4,
        max_calls_per_turn: int = 4,
        tool: Callable[[str], str] = calculate,
        max_result_chars: int = MAX_RESULT_CHARS,
        system_prompt: str | None = TOOL_SYSTEM_PROMPT,
        **kwargs: Any,
    ) -> None:
        self.max_turns = _positive_int("max_turns", max_turns)
        self.max_calls_per_turn = _positive_int("max_calls_per_turn", max_calls_per_turn)
        self.max_result_chars = _positive_int("max_result_chars", max_result_chars)
        if not callable(tool):
            raise TypeError(f"tool must be callable, got {type(tool).__name__}")
        super().__init__(task, system_prompt=system_prompt, **kwargs)
        self.tool = tool

    def _run_tool(self, call: str) -> str:
        out = str(self.tool(call))
        if len(out) > self.max_result_chars:
            out = out[: self.max_result_chars] + f" ...(cut to {self.max_result_chars} characters)"
        return f"<result>{out}</result>"

    def step(self, action: str) -> tuple[str, SupportsFloat, bool, bool, dict[str, Any]]:
        turn = self._begin_step(action)
        close = None
        for close in _THINK_CLOSE_RE.finditer(action):
            pass
        section = action[close.end() :] if close is not None else action
        if _ANSWER_OPEN_RE.search(section):
            return self._finish_step(action, self.grade(action), None, True, False)
        calls = find_tag_contents(section, "tool")
        fp = self.grader.fingerprint
        if calls:
            g = Grade(0.0, reason="tool call; no final answer yet", grader=fp, details={"tool_calls": len(calls)})
        else:
            g = Grade(0.0, reason="neither a tool call nor an answer", grader=fp)
        if turn >= self.max_turns:
            return self._finish_step(action, g, None, False, True)  # nobody reads a last result: no tool run
        if calls:
            results = [self._run_tool(c) for c in calls[: self.max_calls_per_turn]]
            if len(calls) > self.max_calls_per_turn:
                results.append(f"(only the first {self.max_calls_per_turn} tool calls were run)")
            feedback = "\n".join(results)
        else:
            feedback = "No <tool> call and no <answer> found. Call the calculator with <tool>EXPR</tool> or give your final answer inside <answer> </answer>."
        return self._finish_step(action, g, feedback, False, False)
