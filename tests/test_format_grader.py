"""Format grader: <think>…</think> then exactly one answer and nothing after it."""

import pytest

from thinkgym.verifiers import grade
from thinkgym.verifiers.format import FormatConfig, check_format

OK = 1.0
BAD = 0.0

CASES = [
    ("<think>reason</think>\\boxed{3}", OK, ""),
    ("<think>reason</think>\nSo the answer is \\boxed{3}.", OK, ""),
    ("<think>reason</think> $\\boxed{3}$", OK, ""),
    ("<think>reason</think> \\[\\boxed{3}\\]", OK, ""),
    ("  <think>reason</think><answer>3</answer>\n", OK, ""),
    ("<think>reason</think>\\boxed{3} because reasons", BAD, "text after the answer"),
    ("<think>reason</think><answer>3</answer> also 4", BAD, "text after the answer"),
    ("<think></think>\\boxed{3}", BAD, "empty think"),
    ("<think>  \n </think>\\boxed{3}", BAD, "empty think"),
    ("reason</think>\\boxed{3}", BAD, "exactly one <think>"),
    ("<think>reason\\boxed{3}", BAD, "exactly one <think>"),
    ("<think>a</think><think>b</think>\\boxed{3}", BAD, "exactly one <think>"),
    ("<think>a</think>\\boxed{3}</think>", BAD, "exactly one <think>"),
    ("</think>x<think>\\boxed{3}", BAD, "exactly one <think>"),
    ("hello <think>a</think>\\boxed{3}", BAD, "text before <think>"),
    ("<think>a <answer>3</answer></think><answer>3</answer>", BAD, "inside the think"),
    ("<think>a</think>the answer is 3", BAD, "no well-formed answer"),
    ("<think>a</think><answer>3", BAD, "no well-formed answer"),
    ("<think>a</think>\\boxed{3}\\boxed{4}", BAD, "more than one answer"),
    ("<think>a</think><answer>3</answer><answer>3</answer>", BAD, "more than one answer"),
    ("", BAD, "exactly one <think>"),
    # the end of the last box is found by bracket matching, not by searching for its text
    ("<think>a</think>\\boxed{5} and an essay after the answer that ends in 5}", BAD, "text after the answer"),
    ("<think>a</think><answer></answer>", BAD, "empty answer"),
    ("<think>a</think>\\boxed{ }", BAD, "empty answer"),
    ("<think>\u200b\ufeff</think><answer>5</answer>", BAD, "empty think"),
    ("<think>\u3164\u3164</think><answer>5</answer>", BAD, "empty think"),
    # an answer that typesets as nothing is missing
    ("<think>a</think>\\boxed{{}}", BAD, "empty answer"),
    ("<think>a</think>\\boxed{\\ }", BAD, "empty answer"),
    ("<think>a</think>\\boxed{\\text{ }\\quad\\,}", BAD, "empty answer"),
    ("<think>a</think>\\boxed{\u3164}", BAD, "empty answer"),
    ("<think>a</think><answer>\u3164\u3164</answer>", BAD, "empty answer"),
    ("<think>a</think><answer>\u2800\u115f\u00a0\u3000\u200b</answer>", BAD, "empty answer"),
    ("<think>a</think><answer>\x01</answer>", BAD, "empty answer"),
    # ...but an answer that only looks sparse is kept
    ("<think>a</think>\\boxed{\\{\\}}", OK, ""),
    ("<think>a</think>\\boxed{\\emptyset}", OK, ""),
    ("<think>a</think>\\boxed{\\text{no}}", OK, ""),
    ("<think>a</think>\\boxed{\\quad 0}", OK, ""),
    ("<think>a</think><answer>\u4e00</answer>", OK, ""),
]


@pytest.mark.parametrize("text, expected, why", CASES)
def test_format_cases(text, expected, why):
    g = grade("format", text, None)
    assert g.score == expected, g
    assert why in g.reason
    assert set(g.components) >= {"think_tags", "answer", "nothing_after_answer"}


def test_config_knobs():
    # The chat template opened <think> in the prompt: the completion only closes it.
    assert check_format("reason</think>\\boxed{3}", FormatConfig(think_in_prompt=True)).score == 1.0
    assert check_format("<think>r</think>\\boxed{3}", FormatConfig(think_in_prompt=True)).score == 0.0
    lax = FormatConfig(allow_text_after_answer=True, allow_multiple_answers=True, allow_text_before_think=True)
    assert check_format("hi <think>r</think>\\boxed{3}\\boxed{3} bye", lax).score == 1.0
    assert check_format("<think>ab</think>\\boxed{3}", FormatConfig(min_think_chars=10)).score == 0.0
    part = check_format("<think></think>\\boxed{3} trailing", FormatConfig(partial=True))
    assert 0.0 < part.score < 1.0 and part.components["think_nonempty"] == 0.0


def test_partial_credit_counts_only_structure_that_is_there():
    assert check_format("", FormatConfig(partial=True)).score == 0.0
    assert check_format("just text", FormatConfig(partial=True)).score == 0.0


def test_config_from_dict():
    assert grade("format", "reason</think>\\boxed{3}", None, format_config={"think_in_prompt": True}).score == 1.0


def test_format_ignores_correctness():
    assert grade("format", "<think>r</think>\\boxed{wrong}", "3").score == 1.0
