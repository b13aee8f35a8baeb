"""LLM judge under adversarial completions, judge replies and servers (loopback stubs only)."""

from __future__ import annotations

import logging
import threading
import time

import pytest
from test_judge import GOOD, stub  # noqa: F401  (the stub server fixture, shared)

from thinkgym.verifiers.judge import JudgeClient, JudgeConfig, build_messages, client_for, judge, parse_verdict

N = "c" * 16


stub2 = stub  # a second, independent server


def test_reply_cut_off_inside_its_reasoning_has_no_verdict():
    # max_tokens ran out while the judge was still thinking: its tentative verdict is no verdict.
    score, why = parse_verdict(f"<think>The candidate says 5. VERDICT {N}: CORRECT? No, wait", N, "x")
    assert score is None and "never closed" in why
    # Reasoning tags in another case are reasoning too.
    assert parse_verdict(f"<THINK>VERDICT {N}: CORRECT?</THINK>\nVERDICT {N}: INCORRECT", N, "x")[0] == 0.0
    assert parse_verdict(f"<think>hm</think>\nVERDICT {N}: CORRECT", N, "x")[0] == 1.0


@pytest.mark.parametrize("line, score", [("7.", 0.7), ("8/10.", 0.8), ("**9**.", 0.9), ("7,5", None), ("7.5", None), ("7-8", None)])
def test_score_may_end_a_sentence(line, score):
    assert parse_verdict(f"SCORE {N}: {line}", N, "", mode="score")[0] == score


@pytest.mark.parametrize("value, score", [("`CORRECT`", 1.0), ("<b>INCORRECT</b>", 0.0), ("__CORRECT__", 1.0),
                                          ("*CORRECT*.", 1.0), ("CORRECTLY", None), ("CORRECTION: INCORRECT", None)])
def test_verdict_in_markdown_or_html(value, score):
    assert parse_verdict(f"VERDICT {N}: {value}", N, "x")[0] == score


def test_base_url_query_stays_a_query(stub):
    stub.script = ["VERDICT {nonce}: CORRECT"]
    cfg = JudgeConfig(base_url=stub.url + "/?api-version=2024-06-01", model="m", cache=False)
    assert judge(GOOD, "4", cfg=cfg).score == 1.0
    assert stub.paths == ["/v1/chat/completions?api-version=2024-06-01"]


def test_credentials_in_base_url_are_refused_without_repeating_them(stub, caplog):
    stub.script = ["VERDICT {nonce}: CORRECT"]
    for url in (stub.url.replace("://", "://user:hunter2@"), "http://user:hunter2@127.0.0.1:bad/v1"):
        with caplog.at_level(logging.WARNING, logger="thinkgym.verifiers.judge"):
            g = judge(GOOD, "4", cfg=JudgeConfig(base_url=url, cache=False))
        assert g.score is None and "credentials" in g.reason and "hunter2" not in g.reason
    assert "hunter2" not in caplog.text and not stub.requests


def test_api_key_is_trimmed_and_never_quoted(stub, monkeypatch, caplog):
    stub.script = ["VERDICT {nonce}: CORRECT"]
    monkeypatch.setenv("JUDGE_TEST_KEY", "sk-secret42\n")  # as read from a key file
    cfg = stub.cfg(api_key_env="JUDGE_TEST_KEY")
    assert judge(GOOD, "4", cfg=cfg).score == 1.0
    assert stub.headers[-1]["Authorization"] == "Bearer sk-secret42"
    monkeypatch.setenv("JUDGE_TEST_KEY", "sk-sec\rret42")
    with caplog.at_level(logging.WARNING, logger="thinkgym.verifiers.judge"):
        g = judge(GOOD, "4", cfg=cfg)
    assert g.score is None and "JUDGE_TEST_KEY" in g.reason and "ret42" not in g.reason + caplog.text
    assert len(stub.requests) == 1


@pytest.mark.parametrize("body", [b"not json", b'{"error": {"message": "overloaded"}}', b'{"choices": []}',
                                  b'{"choices": [{"message": {"content": ["x"]}}]}', b"[" * 100_000],
                         ids=["text", "error", "no-choices", "list-content", "nested"])
def test_garbage_200_is_an_infrastructure_error(stub, body):
    stub.script = [body]
    g = judge(GOOD, "4", cfg=stub.cfg(max_retries=2))
    assert g.score is None and "malformed" in g.reason and len(stub.requests) == 1


def test_config_bounds():
    for kw in ({"backoff_s": -1}, {"backoff_s": float("inf")}, {"timeout_s": float("inf")},
               {"max_backoff_s": float("nan")}, {"max_completion_chars": 0}):
        with pytest.raises(ValueError):
            JudgeConfig(**kw)


def test_limit_of_one_char_still_cuts(stub):
    stub.script = ["VERDICT {nonce}: CORRECT"]
    judge("The answer is \\boxed{4}.", "4", cfg=stub.cfg(max_completion_chars=1))
    user = stub.requests[-1]["messages"][1]["content"]
    assert "boxed" not in user and "characters omitted" in user


def test_backoff_is_capped(stub):
    stub.script = [503, 503, 503, "VERDICT {nonce}: CORRECT"]
    t0 = time.monotonic()
    g = judge(GOOD, "4", cfg=stub.cfg(max_retries=3, backoff_s=5.0, max_backoff_s=0.05))
    assert g.score == 1.0 and time.monotonic() - t0 < 2.0


def test_cache_is_bounded_in_characters(stub):
    stub.script = ["VERDICT {nonce}: CORRECT " + "x" * 60]
    cfg = stub.cfg(cache=True)
    client = JudgeClient(cfg, cache_chars=100)
    msgs = [build_messages(f"\\boxed{{{i}}}", "4", None, None, cfg)[0] for i in range(3)]
    for m in msgs:
        client.chat(m)
        assert client.chat(m)[1] is True
    assert len(client._cache) == 1 and client._cached_chars <= 100
    assert client.chat(msgs[0])[1] is False  # evicted


def test_redirect_to_another_server_is_not_followed(stub, stub2):
    stub2.script = ["VERDICT {nonce}: CORRECT"]
    stub.script = [("raw", 307, {"Location": stub2.url + "/chat/completions"}, b"")]
    g = judge(GOOD, "4", cfg=stub.cfg(max_retries=2))
    assert g.score is None and "HTTP 307" in g.reason and not stub2.requests and len(stub.requests) == 1


def test_proxy_environment_is_not_used(stub, stub2, monkeypatch):
    stub.script = ["VERDICT {nonce}: CORRECT"]
    stub2.script = ["VERDICT {nonce}: CORRECT"]
    proxy = stub2.url.rsplit("/", 1)[0]
    for var in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(var, proxy)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert judge(GOOD, "4", cfg=stub.cfg()).score == 1.0
    assert len(stub.requests) == 1 and not stub2.requests


def test_concurrent_grades_get_their_own_verdicts(stub):
    # Overlapping requests through one shared client: each grade must get the reply to its own request.
    stub.script = [("sleep", 0.02, "{candidate}\nVERDICT {nonce}: CORRECT")]
    cfg = stub.cfg(cache=True, nonce_secret="concurrency")
    out: dict[int, tuple] = {}

    def work(i):
        c = f"\\boxed{{{i}}}"
        g = judge(c, "4", cfg=cfg)
        out[i] = (g.score, g.details["reply"].startswith(c + "\n"), g.details["nonce"] == build_messages(c, "4", None, None, cfg)[1])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out == {i: (1.0, True, True) for i in range(12)}
    assert client_for(cfg).http_requests == 12
    work(3)
    assert client_for(cfg).http_requests == 12  # served from the cache, under the same key


def test_client_registry_is_bounded_and_keeps_the_recent_ones():
    # Per-item grader_kwargs can make a new config per row; each client holds its own cache.
    from thinkgym.verifiers import judge as judge_mod

    first = JudgeConfig(base_url="http://127.0.0.1:9/v1", model="m-first")
    kept = client_for(first)
    for i in range(3 * judge_mod._CLIENTS_MAX):
        client_for(JudgeConfig(base_url="http://127.0.0.1:9/v1", model=f"m{i}"))
        assert client_for(first) is kept  # in use, so never the one dropped
    assert len(judge_mod._CLIENTS) == judge_mod._CLIENTS_MAX
    assert JudgeConfig(base_url="http://127.0.0.1:9/v1", model="m0") not in judge_mod._CLIENTS
