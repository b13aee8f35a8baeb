"""Shared fixtures. Heavy ones (tiny model) are session-scoped and built once."""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Any, Iterator

# vLLM on CPU: a 1 GiB KV cache is plenty for the tiny model, and the in-process engine
# starts in seconds. Set before anything imports vllm.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A freshly built, random-init tiny Qwen2 model + tokenizer saved with save_pretrained."""
    from thinkgym.sft_coldstart.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


def free_port() -> int:
    """A loopback port free right now (tests that start servers or torchrun: fixed ports clash
    when two test runs share a machine)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sigint_default() -> None:
    """``preexec_fn`` for a child that a test sends Ctrl-C (SIGINT): a shell's background job or
    nohup starts the test run with SIGINT ignored, children inherit that, and Python then never
    installs its KeyboardInterrupt handler."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextlib.contextmanager
def loopback_server(handler: type) -> Iterator[str]:
    """An HTTP server on 127.0.0.1 running ``handler`` in a thread; yields its base URL."""
    from http.server import ThreadingHTTPServer

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def send_body(handler: Any, code: int, body: bytes, ctype: str = "application/json") -> None:
    """Answer ``handler``'s request with ``code`` and ``body``; a client that already left (timed
    out, or was killed) is not the test's failure."""
    handler.send_response(code)
    handler.send_header("Content-Type", ctype)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    try:
        handler.wfile.write(body)
    except (BrokenPipeError, ConnectionResetError):
        pass
