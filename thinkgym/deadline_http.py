"""One HTTP exchange under one deadline (stdlib only): the LLM judge and the vLLM server client.

``urllib`` and ``http.client`` give each socket read its own timeout. A server that sends a byte
just inside that timeout (headers included) would hold a request forever; here every send and
receive of the request, status line, headers and body may wait only until one deadline, and the
reply size is capped.
"""

from __future__ import annotations

import http.client
import io
import socket
import threading
import time
import urllib.parse
from typing import Any, Callable


class BadURL(ValueError):
    """The URL is not ``http(s)://host[:port]/...``."""


class _DeadlineReader(io.RawIOBase):
    """Raw reads from ``sock``, each allowed only the time left before the deadline."""

    def __init__(self, sock: socket.socket, left: Callable[[], float]) -> None:
        super().__init__()
        self._sock = sock
        self._left = left

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        self._sock.settimeout(self._left())
        return self._sock.recv_into(buf)


class _DeadlineSocket:
    """A connected socket whose every blocking send and receive gets only the time left."""

    def __init__(self, sock: socket.socket, left: Callable[[], float]) -> None:
        self._sock = sock
        self._left = left

    def sendall(self, data: Any) -> None:
        self._sock.settimeout(self._left())
        self._sock.sendall(data)

    def makefile(self, mode: str = "rb", *args: Any, **kwargs: Any) -> io.BufferedReader:
        return io.BufferedReader(_DeadlineReader(self._sock, self._left))

    def close(self) -> None:
        # http.client closes the connection as soon as the headers say it will not be reused,
        # before the body is read; the real socket is closed by request() when the exchange is over.
        pass


def request(method: str, url: str, data: bytes | None, headers: dict[str, str], timeout_s: float,
            max_bytes: int) -> tuple[int, bytes]:
    """``(status, body)`` of one exchange; any status is returned, errors are not raised for it.

    Raises :class:`TimeoutError` when the reply is not complete ``timeout_s`` after the start,
    ``http.client.HTTPException`` for a reply over ``max_bytes`` or a broken one, ``OSError`` for
    network errors and :class:`BadURL`. Name resolution, connecting and the TLS handshake run
    under the deadline too.
    """
    deadline = time.monotonic() + timeout_s

    def left() -> float:
        t = deadline - time.monotonic()
        if t <= 0:
            raise TimeoutError(f"no complete reply within {timeout_s:g} s")
        return t

    u = urllib.parse.urlsplit(url)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise BadURL(f"URL must be http(s)://host[:port]/..., got {url!r}")
    try:
        port = u.port
    except ValueError:
        raise BadURL(f"bad port in URL {url!r}") from None
    cls = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
    conn = cls(u.hostname, port, timeout=left())
    # http.client resolves the name with a blocking getaddrinfo that no timeout bounds (a dead
    # resolver holds it for tens of seconds): connect to addresses resolved under the deadline.
    conn._create_connection = lambda addr, timeout, source=None: _connect(addr[0], addr[1], left, source)
    sock = None
    try:
        conn.connect()
        sock = conn.sock
        conn.sock = _DeadlineSocket(sock, left)
        path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        chunks, size = [], 0
        while True:
            chunk = resp.read1(65536)
            if not chunk:
                break
            size += len(chunk)
            if size > max_bytes:
                raise http.client.HTTPException(f"reply larger than {max_bytes} bytes")
            chunks.append(chunk)
        return resp.status, b"".join(chunks)
    except TimeoutError:
        raise TimeoutError(f"no complete reply within {timeout_s:g} s") from None
    finally:
        conn.close()
        if sock is not None:
            sock.close()


def _resolve(host: str, port: int, left: Callable[[], float]) -> list[tuple[Any, ...]]:
    """``getaddrinfo`` in a daemon thread, waited on only until the deadline."""
    out: dict[str, Any] = {}

    def work() -> None:
        try:
            out["infos"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as e:
            out["error"] = e

    t = threading.Thread(target=work, name="thinkgym-resolve", daemon=True)
    t.start()
    t.join(left())
    if t.is_alive():
        raise TimeoutError(f"resolving {host!r} took too long")
    if "error" in out:
        raise out["error"]
    return out["infos"]


def _connect(host: str, port: int, left: Callable[[], float], source: Any = None) -> socket.socket:
    """Like ``socket.create_connection``, with resolution and each attempt under the deadline."""
    err: OSError | None = None
    for family, kind, proto, _, addr in _resolve(host, port, left):
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(left())
            if source:
                sock.bind(source)
            sock.connect(addr)
            return sock
        except OSError as e:
            sock.close()
            err = e
            if isinstance(e, TimeoutError):
                raise
    raise err or OSError(f"no address for {host!r}")
