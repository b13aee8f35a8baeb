"""Code grader: run a candidate program against tests in a sandbox; the verdict is made here.

Test schema (shared with the code task sources)::

    {"type": "function", "entry_point": "f", "cases": [{"args": [...], "expected": JSON}]}
    {"type": "stdio", "cases": [{"stdin": "...", "expected_stdout": "..."}]}

Why the candidate cannot game the verdict:

* Expected values never enter the sandbox: only the inputs do, each read by the harness when its
  case starts (a candidate never sees a later case's input). Each function result is turned
  into JSON inside the sandbox and compared *here* with the expected value (floats with a
  tolerance), so ``__eq__`` overrides, patched builtins / ``unittest`` / ``math.isclose``, exit
  codes and printed "PASSED" markers change nothing. JSON can only carry plain data, so an
  "always equal" object is not even serialisable.
* Inside the sandbox a small trusted harness (``_HARNESS``) forks the candidate per program or
  per stdio case. The candidate never holds the harness's result channel (the sandbox's stdout):
  its own stdout/stdin are separate pipes, and the harness makes itself non-dumpable so the
  candidate cannot reopen its descriptors through ``/proc`` or ptrace it.
* The result must carry a per-run random nonce, which the harness reads from its stdin only
  after it has SIGKILLed every candidate process, so no candidate code ever runs while the nonce
  exists. Anything else on the channel (a forged frame, extra bytes) makes the run a failure.
* stdio output is compared whole (trailing whitespace on lines and at the end ignored), never
  by prefix; a non-zero exit is a failure.
"""

from __future__ import annotations

import bisect
import codecs
import itertools
import json
import logging
import marshal
import math
import re
import secrets
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable, Iterator, Mapping

from thinkgym.verifiers.base import Grade, bool_arg, config_arg, register_grader, text_arg
from thinkgym.verifiers.sandbox import Limits, get_sandbox

__all__ = ["grade_program", "grade_programs", "extract_code", "read_result", "validate_tests", "values_equal", "DEFAULT_LIMITS"]

log = logging.getLogger("thinkgym.verifiers.code")

DEFAULT_LIMITS = Limits()
#: Room left for the harness to report before the sandbox's wall clock kills it.
_REPORT_MARGIN_S = 1.5
_START = b"\x02"

# The trusted harness. It runs as the sandbox's first process; nothing the candidate does can
# make it write a result the grader would accept, because the nonce is read only after every
# candidate process is dead. Kept dependency-free (stdlib only, runs under ``python -I -S``).
_HARNESS = r'''
import os, sys, time, signal, select, marshal, ctypes, resource
os.write(1, b"\x02")
# Non-dumpable: processes of the same uid can no longer open /proc/<pid>/fd|mem or ptrace us.
ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)
# Child subreaper: orphans of the candidate become our zombies until kill_all reaps them, so
# their CPU stays visible to program_cpu (reaped by the sandbox's init, it would vanish).
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)
PID = os.getpid()

def read_exact(fd, n):
    buf = bytearray()
    while len(buf) < n:
        b = os.read(fd, n - len(buf))
        if not b:
            raise EOFError("short read")
        buf += b
    return bytes(buf)

def read_line(fd):
    buf = bytearray()
    while True:
        b = os.read(fd, 1)
        if not b or b == b"\n":
            return bytes(buf)
        buf += b

# Exact-length reads: the nonce that follows the job must stay in the pipe, not in our memory.
job = marshal.loads(read_exact(0, int(read_line(0))))
taken = 0

def next_input():
    # Each case's input follows the job and is read only when its case starts: a candidate
    # forked earlier (a function worker serves every case) must not see later inputs, or it
    # could spend the CPU of easy cases precomputing a hard one.
    global taken
    taken += 1
    return marshal.loads(read_exact(0, int(read_line(0))))
t_end = time.monotonic() + job["budget_s"]
CASE_S, CASE_WALL, OUT_CAP = job["case_s"], job["case_wall_s"], job["out_cap"]
CLK = os.sysconf("SC_CLK_TCK")
CPU_RLIMIT = resource.getrlimit(resource.RLIMIT_CPU)[0]

def cpu_of(pid, reaped=False):
    """CPU seconds (all threads) used so far by ``pid`` (with ``reaped``, also by the children
    it has waited for): time limits count CPU, not wall clock, so a busy machine does not
    turn honest programs into timeouts."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return sum(int(x) for x in fields[11:15 if reaped else 13]) / CLK
    except (OSError, IndexError, ValueError):
        return 0.0

UID = os.getuid()

def owned(p):
    # /proc/<pid> of a non-dumpable process is owned by root, so ask status for the real uid.
    try:
        with open("/proc/" + p + "/status", "rb") as f:
            for line in f:
                if line.startswith(b"Uid:"):
                    return int(line.split()[1]) == UID
    except (OSError, ValueError):
        pass
    return False

def program_cpu(pid):
    """CPU seconds used so far by the program: every process of the sandbox uid (zombies
    included) and the children each has reaped. A program must not escape the limit by
    computing in a child (or a daemon it left, or a grandchild a live child reaps) while
    ``pid`` waits."""
    total = 0.0
    for p in os.listdir("/proc"):
        if p.isdigit() and int(p) != PID and (int(p) == pid or owned(p)):
            total += cpu_of(int(p), reaped=True)
    return total

def kill_all():
    # Every process of the sandbox uid except us: candidates, their daemons and orphans.
    # A process with SIGKILL pending never runs user code again, so after this no candidate
    # code can execute; then wait until no other process of our uid is left.
    for _ in range(200):
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            pass
        while True:
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    break
            except ChildProcessError:
                break
        if not [p for p in os.listdir("/proc") if p.isdigit() and int(p) != PID and owned(p)]:
            return
        time.sleep(0.002)

def child_setup(keep):
    # Runs in the forked child before any candidate code: drop the harness's channel.
    import fcntl
    base = max(list(keep) + list(keep.values())) + 1
    high = {dst: fcntl.fcntl(src, fcntl.F_DUPFD, base) for dst, src in keep.items()}
    for dst, src in high.items():
        os.dup2(src, dst)
    os.closerange(max(keep) + 1, 4096)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)

def run_candidate(src):
    import types, builtins
    mod = types.ModuleType("__main__")
    mod.__file__ = "/tmp/solution.py"
    mod.__builtins__ = builtins
    sys.modules["__main__"] = mod
    sys.argv = ["solution.py"]
    exec(compile(src, "solution.py", "exec"), mod.__dict__)
    return mod

def finish(code):
    # What the interpreter does at exit: join non-daemon threads, atexit, flush.
    try:
        if "threading" in sys.modules:
            sys.modules["threading"]._shutdown()
        import atexit
        atexit._run_exitfuncs()
    except BaseException:
        pass
    for f in (sys.stdout, sys.stderr):
        try:
            f.flush()
        except BaseException:
            pass
    os._exit(code)

def exit_code(e):
    if e.code is None:
        return 0
    if isinstance(e.code, int):
        return e.code & 0xFF
    try:
        print(e.code, file=sys.stderr)
    except BaseException:
        pass
    return 1

READY = b'{"ready": true}'
# A minimal JSON encoder for our own report (importing json costs more than the rest of the start).
ESC = {i: "\\u%04x" % i for i in list(range(32)) + list(range(0xD800, 0xE000))}
ESC[ord('"')] = '\\"'
ESC[ord("\\")] = "\\\\"

def jenc(o):
    if o is None:
        return "null"
    if o is True:
        return "true"
    if o is False:
        return "false"
    if isinstance(o, (int, float)):
        return repr(o)
    if isinstance(o, str):
        return '"' + o.translate(ESC) + '"'
    if isinstance(o, dict):
        return "{" + ",".join(jenc(str(k)) + ":" + jenc(v) for k, v in o.items()) + "}"
    return "[" + ",".join(jenc(v) for v in o) + "]"

def short_exc(e):
    return (type(e).__name__ + ": " + str(e))[:300]

def pump(pid, r_out, w_in, data, deadline):
    """Feed stdin, read stdout with a cap, until EOF + exit, the CPU/wall limit or the cap."""
    sel = select.poll()
    out = bytearray()
    status = None
    if data:
        os.set_blocking(w_in, False)
        sel.register(w_in, select.POLLOUT)
    else:
        os.close(w_in)
        w_in = -1
    sel.register(r_out, select.POLLIN)
    pos = 0
    eof = False
    rc = None
    while not eof:
        left = deadline - time.monotonic()
        if left <= 0:
            status = "wall_limit"
            break
        ready = sel.poll(min(left, 0.05) * 1000)
        if rc is None and program_cpu(pid) > CASE_S:
            status = "cpu_limit"
            break
        if not ready and rc is None:
            # The program may have exited while a daemon it left holds the pipe open: what
            # it wrote before exiting is already in the pipe, later writes do not count.
            wp, st = os.waitpid(pid, os.WNOHANG)
            if wp:
                rc = os.waitstatus_to_exitcode(st)
                os.set_blocking(r_out, False)
                try:
                    while len(out) <= OUT_CAP:
                        b = os.read(r_out, 65536)
                        if not b:
                            break
                        out += b
                except BlockingIOError:
                    pass
                if len(out) > OUT_CAP:
                    status = "output_limit"
                break
        for fd, _ in ready:
            if fd == w_in:
                try:
                    pos += os.write(w_in, data[pos:pos + 65536])
                except BlockingIOError:
                    continue
                except OSError:  # the candidate closed its stdin: the rest is not for it
                    pos = len(data)
                if pos >= len(data):
                    sel.unregister(w_in)
                    os.close(w_in)
                    w_in = -1
            else:
                b = os.read(r_out, 65536)
                if not b:
                    eof = True
                    break
                out += b
                if len(out) > OUT_CAP:
                    status = "output_limit"
                    eof = True
                    break
    for fd in (w_in, r_out):
        if fd >= 0:
            os.close(fd)
    del out[OUT_CAP:]
    return out, status, rc

def limit_hit(why, t0):
    """Which time limit stopped the case started at ``t0`` (reported as status "timeout" with
    this as its error), or None when ``why`` is no time limit."""
    if why == "cpu_limit":
        return "CPU time limit (%g s) exceeded" % CASE_S
    if why == "wall_limit":
        if t0 + CASE_WALL <= t_end:
            return "wall-clock limit (%g s) exceeded" % CASE_WALL
        return "the run's wall-clock budget ran out"
    return None

def wait_exit(pid, deadline):
    while True:
        wp, st = os.waitpid(pid, os.WNOHANG)
        if wp:
            return os.waitstatus_to_exitcode(st)
        if time.monotonic() > deadline:
            return None
        time.sleep(0.001)

def wait_program(pid, deadline):
    """(exit code, None) of a program whose stdout is at EOF, or (None, the limit it overran):
    one that closed its stdout can compute on, and its CPU counts as before."""
    next_cpu_check = time.monotonic() + 0.05  # most programs exit right after EOF: no /proc scan
    while True:
        wp, st = os.waitpid(pid, os.WNOHANG)
        if wp:
            return os.waitstatus_to_exitcode(st), None
        now = time.monotonic()
        if now > deadline:
            return None, "wall_limit"
        if now >= next_cpu_check:
            if program_cpu(pid) > CASE_S:
                return None, "cpu_limit"
            next_cpu_check = now + 0.05
        time.sleep(0.001)

def run_stdio(src, stdin_text):
    r_in, w_in = os.pipe()
    r_out, w_out = os.pipe()
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            child_setup({0: r_in, 1: w_out, 2: 2})
        except BaseException:
            os._exit(127)
        code = 0
        try:
            run_candidate(src)
        except SystemExit as e:
            code = exit_code(e)
        except BaseException:
            try:
                import traceback
                traceback.print_exc()
            except BaseException:
                pass
            code = 1
        finish(code)
    os.close(r_in)
    os.close(w_out)
    deadline = min(t0 + CASE_WALL, t_end)
    out, status, rc = pump(pid, r_out, w_in, stdin_text.encode(), deadline)
    if rc is None and status is None:
        rc, status = wait_program(pid, deadline)
    elif rc is None:
        rc = wait_exit(pid, 0)
    kill_all()
    res = {"status": status or ("ok" if rc == 0 else "runtime_error"), "returncode": rc,
           "time_s": round(time.monotonic() - t0, 4)}
    hit = limit_hit(status, t0)
    if hit:
        res.update(status="timeout", error=hit)
    if res["status"] == "ok":
        # Raw bytes, sent after the report (see the end): the grader decodes and judges
        # them. A failed case's output decides nothing, so it is not sent at all.
        res["out"] = out
    return res

class Worker:
    """One forked candidate process that defines the function and answers calls."""

    def __init__(self, src, entry):
        r_req, self.w_req = os.pipe()
        self.r_resp, w_resp = os.pipe()
        devnull = os.open("/dev/null", os.O_RDWR)
        self.pid = os.fork()
        if self.pid == 0:
            try:
                child_setup({0: devnull, 1: devnull, 2: 2, 3: r_req, 4: w_resp})
                call_loop(src, entry)
            finally:
                os._exit(1)
        os.close(r_req)
        os.close(w_resp)
        os.close(devnull)
        os.set_blocking(self.w_req, False)
        self.buf = bytearray()

    def send(self, obj, deadline, cpu0):
        """Write one request; None once written (or once the worker can no longer read it), else
        why not. Never a blocking write: a worker that stops reading its requests (its code
        swapped fd 3 or patched os.read) would hold us past every limit, until the sandbox's
        wall clock killed the whole run."""
        data = marshal.dumps(obj)
        view = memoryview(b"%d\n" % len(data) + data)
        sel = select.poll()
        sel.register(self.w_req, select.POLLOUT)
        next_cpu_check = 0.0
        while view:
            try:
                view = view[os.write(self.w_req, view[:65536]):]
                continue
            except BlockingIOError:
                pass
            except OSError:
                # Its read end is closed, so the worker is gone or deaf: recv tells which.
                return None
            now = time.monotonic()
            if now >= deadline:
                return "wall_limit"
            # Throttled: a worker that reads a byte at a time must not make us scan /proc per byte.
            if now >= next_cpu_check:
                if program_cpu(self.pid) - cpu0 > CASE_S:
                    return "cpu_limit"
                next_cpu_check = now + 0.05
            sel.poll(min(deadline - now, 0.05) * 1000)
        return None

    def recv(self, deadline, cpu0):
        """One length-prefixed reply, or (None, why); at most CASE_S CPU seconds past ``cpu0``."""
        while True:
            msg, why = self.frame()
            if why:
                return None, why
            left = deadline - time.monotonic()
            if msg is None and left > 0:
                sel = select.poll()
                sel.register(self.r_resp, select.POLLIN)
                if sel.poll(min(left, 0.05) * 1000):
                    b = os.read(self.r_resp, 1 << 16)
                    if not b:
                        return None, "crash"
                    self.buf += b
                    msg, why = self.frame()
                    if why:
                        return None, why
                left = deadline - time.monotonic()
            # Checked before a reply is accepted too: a program that SIGSTOPs us could
            # otherwise compute past both limits, reply, and have a helper SIGCONT us.
            if program_cpu(self.pid) - cpu0 > CASE_S:
                return None, "cpu_limit"
            if left <= 0:
                return None, "wall_limit"
            if msg is not None:
                return msg, None

    def frame(self):
        """The next complete reply in the buffer: (msg, None), (None, None) or (None, why)."""
        nl = self.buf.find(b"\n")
        if nl >= 0:
            try:
                n = int(self.buf[:nl])
            except ValueError:
                return None, "malformed reply"
            if n > OUT_CAP:
                return None, "output_limit"
            if len(self.buf) >= nl + 1 + n:
                msg = bytes(self.buf[nl + 1:nl + 1 + n])
                del self.buf[:nl + 1 + n]
                return msg, None
        if len(self.buf) > OUT_CAP + 32:
            return None, "output_limit"
        return None, None

    def stop(self):
        for fd in (self.w_req, self.r_resp):
            try:
                os.close(fd)
            except OSError:
                pass
        kill_all()
        try:
            rc = wait_exit(self.pid, time.monotonic())
        except ChildProcessError:
            rc = None
        return rc

def json_dumps():
    # json.dumps through the C encoder directly: importing the json package (and re) would
    # cost more than a typical call.
    try:
        import _json
    except ImportError:
        import json
        return lambda o: json.dumps(o, allow_nan=True)

    def default(o):
        raise TypeError("Object of type %s is not JSON serializable" % type(o).__name__)

    def dumps(o):
        enc = _json.make_encoder({}, default, _json.encode_basestring_ascii, None, ": ", ", ", False, False, True)
        return "".join(enc(o, 0))
    return dumps

def call_loop(src, entry):
    dumps = json_dumps()

    def reply(obj):
        data = dumps(obj).encode()
        os.write(4, b"%d\n" % len(data) + data)

    try:
        mod = run_candidate(src)
        cls_name, _, meth = entry.rpartition(".")
        target = mod.__dict__[cls_name] if cls_name else None
        if not cls_name and entry not in mod.__dict__:
            raise NameError("entry point %r is not defined" % entry)
        if cls_name and not hasattr(target, meth):
            raise NameError("entry point %r is not defined" % entry)
    except SystemExit as e:
        reply({"load_error": "program exited while loading (code %r)" % (e.code,)})
        finish(1)
    except BaseException as e:
        reply({"load_error": short_exc(e)})
        finish(1)
    reply({"ready": True})
    while True:
        hdr = read_line(3)
        if not hdr:
            finish(0)
        args = marshal.loads(read_exact(3, int(hdr)))
        try:
            fn = getattr(target(), meth) if cls_name else mod.__dict__[entry]
            value = fn(*args)
            try:
                text = dumps(value)
            except (TypeError, ValueError) as e:
                reply({"error": "return value is not JSON-serialisable: " + short_exc(e)})
                continue
            data = b'{"ok": ' + text.encode("utf-8", "surrogatepass") + b"}"
            os.write(4, b"%d\n" % len(data) + data)
        except SystemExit as e:
            reply({"error": "exited during the call (code %r)" % (e.code,)})
            finish(1)
        except BaseException as e:
            reply({"error": short_exc(e)})

def run_function(src, entry, n):
    results = []
    w = None
    load_error = None
    for _ in range(n):
        args = next_input()
        if load_error is not None:
            results.append({"status": "load_error", "error": load_error})
            continue
        if time.monotonic() >= t_end:
            results.append({"status": "not_run", "error": "run out of wall-clock budget"})
            continue
        t0 = time.monotonic()
        if w is not None and CPU_RLIMIT != resource.RLIM_INFINITY and cpu_of(w.pid) + CASE_S > CPU_RLIMIT:
            # RLIMIT_CPU counts a process's whole life: a worker that has answered many cases
            # would be killed mid-case though no case overran. A fresh one starts from zero.
            w.stop()
            w = None
        if w is None:
            w = Worker(src, entry)
            msg, why = w.recv(min(t0 + CASE_WALL, t_end), 0.0)
            if msg != READY:
                # Whatever came back is the candidate's; the grader decodes it.
                load_error = (msg.decode("utf-8", "replace")[:400] if msg
                              else "program failed to load: " + (limit_hit(why, t0) or why or "empty reply"))
                w.stop()
                w = None
                results.append({"status": "load_error", "error": load_error})
                continue
        cpu0 = program_cpu(w.pid)
        deadline = min(time.monotonic() + CASE_WALL, t_end)
        msg, why = None, w.send(args, deadline, cpu0)
        if why is None:
            msg, why = w.recv(deadline, cpu0)
        dt = round(time.monotonic() - t0, 4)
        if msg is None:
            rc = w.stop()
            w = None
            res = {"status": why, "returncode": rc, "time_s": dt}
            hit = limit_hit(why, t0)
            if hit:
                res.update(status="timeout", error=hit)
            results.append(res)
        else:
            # Untrusted bytes from the candidate: passed on verbatim, judged by the grader.
            results.append({"status": "reply", "out": msg, "time_s": dt})
    if w is not None:
        w.stop()
    return results

try:
    if job["mode"] == "stdio":
        cases = []
        for _ in range(job["n_cases"]):
            text = next_input()
            if time.monotonic() >= t_end:
                cases.append({"status": "not_run", "error": "run out of wall-clock budget"})
            else:
                cases.append(run_stdio(job["program"], text))
    else:
        cases = run_function(job["program"], job["entry_point"], job["n_cases"])
    payload = {"cases": cases}
except Exception as e:
    payload = {"harness_error": short_exc(e)}
kill_all()
while taken < job["n_cases"]:  # after a harness error: the nonce comes after every input
    next_input()
nonce = read_exact(0, 32)

def write_all(b):
    view = memoryview(b)
    while view:
        view = view[os.write(1, view):]

# The report is JSON; each case's output ("out") follows it as raw bytes, in case order, its
# length in the report: no escaping (a control character took 6 bytes of the run's output cap)
# and nothing for the grader to parse or copy.
blobs = []
for c in payload.get("cases", ()):
    if "out" in c:
        blobs.append(c.pop("out"))
        c["out_bytes"] = len(blobs[-1])
data = jenc(payload).encode()
write_all(nonce + b" %d %d\n" % (len(data), sum(len(b) for b in blobs)) + data)
for b in blobs:
    write_all(b)
'''


def read_result(stdout: bytes, nonce: bytes) -> tuple[dict | None, str]:
    """The harness's report from the sandbox's stdout, or ``(None, why)``.

    Accepted only in the exact form start byte + nonce + lengths + JSON + outputs and nothing
    else, so bytes from anyone but the harness (which alone ever holds the nonce) void the run.
    The header holds the JSON's length and (when any case has output) the outputs' total
    length. A case with ``out_bytes`` gets ``out``: its next bytes of the outputs, as a
    ``memoryview`` of ``stdout`` (outputs run to tens of MB: never copied).
    """
    if not stdout.startswith(_START):
        return None, "harness did not start"
    nl = stdout.find(b"\n", len(_START), len(_START) + len(nonce) + 64)
    head = stdout[len(_START) : nl]
    if nl < 0 or not head.startswith(nonce + b" "):
        return None, "no valid harness result (run killed or result channel tampered with)"
    try:
        n, *rest = (int(x) for x in head[len(nonce) + 1 :].split(b" "))
        m = rest.pop() if rest else 0
    except ValueError:
        n, m, rest = -1, -1, []
    start = nl + 1
    if rest or n < 0 or m < 0 or start + n + m != len(stdout):
        return None, "result frame has the wrong length (result channel tampered with)"
    try:
        payload = json.loads(stdout[start : start + n])
    except ValueError:
        return None, "result frame is not JSON (result channel tampered with)"
    if not isinstance(payload, dict):
        return None, "result frame is not an object"
    view, pos = memoryview(stdout), start + n
    for case in payload.get("cases") if isinstance(payload.get("cases"), list) else ():
        k = case.get("out_bytes") if isinstance(case, dict) else None
        if k is None:
            continue
        if type(k) is not int or not 0 <= k <= len(stdout) - pos:
            return None, "result frame has the wrong length (result channel tampered with)"
        case["out"], pos = view[pos : pos + k], pos + k
    if pos != len(stdout):
        return None, "result frame has the wrong length (result channel tampered with)"
    return payload, ""


def validate_tests(tests: Any) -> dict:
    """Check a test spec against the schema; returns it as a dict or raises ``ValueError``."""
    if isinstance(tests, str):
        try:
            tests = json.loads(tests)
        except json.JSONDecodeError as e:
            raise ValueError(f"code tests are not valid JSON: {e}") from e
    if not isinstance(tests, Mapping):
        raise ValueError(f"code tests must be a dict, got {type(tests).__name__}")
    kind = tests.get("type")
    cases = tests.get("cases")
    if kind not in ("function", "stdio"):
        raise ValueError(f"code tests 'type' must be 'function' or 'stdio', got {kind!r}")
    if not isinstance(cases, list) or not cases:
        raise ValueError("code tests need a non-empty 'cases' list")
    for i, c in enumerate(cases):
        if not isinstance(c, Mapping):
            raise ValueError(f"case {i}: must be a dict")
        need = ("args", "expected") if kind == "function" else ("stdin", "expected_stdout")
        for k in need:
            if k not in c:
                raise ValueError(f"case {i}: missing field {k!r} (a {kind} case needs {need})")
        if kind == "function" and not isinstance(c["args"], list):
            raise ValueError(f"case {i}: 'args' must be a list")
        if kind == "stdio":
            for k in need:
                if not isinstance(c[k], str):
                    raise ValueError(f"case {i}: 'stdin' and 'expected_stdout' must be strings")
                if not _encodable(c[k]):
                    # A lone surrogate is no byte sequence on a pipe: the harness could not feed
                    # it, or no output could match it, and every program would get a silent 0.
                    raise ValueError(f"case {i}: {k!r} holds a lone surrogate (not encodable as UTF-8)")
    if kind == "function":
        ep = tests.get("entry_point")
        if not isinstance(ep, str) or not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)?", ep):
            raise ValueError(f"function tests need an 'entry_point' identifier (or Class.method), got {ep!r}")
    # Round-trip through JSON so inputs and expected values are plain data on both sides.
    return json.loads(json.dumps(tests))


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def values_equal(got: Any, expected: Any, rel_tol: float = 1e-6, abs_tol: float = 1e-9) -> bool:
    """Structural equality of JSON values; floats within tolerance, bool is not a number."""
    if isinstance(expected, bool) or isinstance(got, bool):
        return type(got) is type(expected) and got == expected
    if isinstance(expected, (int, float)) and isinstance(got, (int, float)):
        if isinstance(expected, int) and isinstance(got, int):
            return got == expected
        if isinstance(expected, int):  # an exact integer answer: 2.0 is 2, 1000000.5 is not 1000000
            return math.isfinite(got) and got.is_integer() and int(got) == expected
        if isinstance(got, int):
            try:
                got = float(got)
            except OverflowError:  # 10**400 is near no float, and math.isclose would raise on it
                return False
        if math.isnan(expected) or math.isnan(got):
            return math.isnan(expected) and math.isnan(got)
        return math.isclose(got, expected, rel_tol=rel_tol, abs_tol=abs_tol)
    if isinstance(expected, list):
        return isinstance(got, list) and len(got) == len(expected) and all(
            values_equal(g, e, rel_tol, abs_tol) for g, e in zip(got, expected)
        )
    if isinstance(expected, dict):
        return isinstance(got, dict) and got.keys() == expected.keys() and all(
            values_equal(got[k], expected[k], rel_tol, abs_tol) for k in expected
        )
    return type(got) is type(expected) and got == expected


#: '[', '{' or ',' characters a reply may have beyond its expected value's JSON: room for an
#: error message (the harness sends at most a few hundred characters of one).
_REPLY_SLACK = 512


def _more_elements(reply: str, expected: Any) -> bool:
    """Whether ``reply`` holds more JSON containers or elements than a reply with a value equal
    to ``expected`` can: that value has the same containers, elements and strings, so its JSON
    has no more '[', '{' or ',' characters than ``json.dumps(expected)``. Parsing costs up to 25
    times the text in objects (``[{}, {}, ...]``), too much for a reply that cannot pass."""
    want = json.dumps(expected)
    return any(reply.count(c) > want.count(c) + _REPLY_SLACK for c in "[{,")


def _norm_stdout(s: str) -> str:
    lines = s.replace("\r\n", "\n").split("\n")
    return "\n".join(line.rstrip() for line in lines).rstrip()


_NL = re.compile(b"\n")
#: Bytes of output decoded at a time: a check never holds a decoded copy of a whole output.
_CHUNK = 1 << 20


def _utf8_chunks(data: memoryview) -> Iterator[str]:
    """``data`` decoded as strict UTF-8, a chunk at a time; raises ``UnicodeDecodeError``."""
    dec = codecs.getincrementaldecoder("utf-8")()
    for i in range(0, len(data), _CHUNK):
        yield dec.decode(data[i : i + _CHUNK])
    yield dec.decode(b"", True)


def _valid_utf8(data: memoryview) -> bool:
    try:
        for _ in _utf8_chunks(data):
            pass
    except UnicodeDecodeError:
        return False
    return True


def _blank(data: memoryview) -> bool:
    """Whether ``data`` is valid UTF-8 of whitespace only (what ``str.rstrip`` removes)."""
    if not data:
        return True
    try:
        return all(not s or s.isspace() for s in _utf8_chunks(data))
    except UnicodeDecodeError:
        return False


def _stdout_matches(got: memoryview, want: str) -> bool:
    """``_norm_stdout(got.decode()) == want`` (``want`` normalised, ``got`` valid UTF-8), in place.

    Line by line on the bytes: line i must be ``want``'s line i plus whitespace, and what
    follows ``want``'s last line whitespace only. It stops at the first line that differs and
    never decodes, splits or copies the whole output (a 16 MB output took about 4 times that
    as text and its copies). Invalid UTF-8 never matches: ``want``'s bytes are valid, and every
    other byte must decode (strictly) as whitespace. Dropping ``\r`` before ``\n`` changes nothing
    here: it ends its line, where ``rstrip`` removes it anyway.
    """
    pos, stop = 0, len(got)
    for line in want.split("\n"):
        if pos > stop:  # fewer lines than expected
            return False
        m = _NL.search(got, pos)
        end = m.start() if m else stop
        w = line.encode("utf-8")
        k = pos + len(w)
        if k > end or got[pos:k] != w or not _blank(got[k:end]):
            return False
        pos = end + 1
    return pos > stop or _blank(got[pos:])


def _as_limits(limits: Limits | Mapping[str, Any] | None) -> Limits:
    if limits is None:
        return DEFAULT_LIMITS
    if isinstance(limits, Limits):
        return limits
    return DEFAULT_LIMITS.replace(**dict(limits))


def _judge_case(kind: str, case: Mapping, res: Mapping) -> dict:
    status = res.get("status")
    out: dict[str, Any] = {"passed": False, "status": status}
    if "time_s" in res:
        out["time_s"] = res["time_s"]
    if kind == "function":
        if status != "reply":
            out["error"] = res.get("error") or status
            if status == "load_error":
                try:  # the candidate's own report of why it did not load
                    out["error"] = str(json.loads(out["error"])["load_error"])[:300]
                except (ValueError, TypeError, KeyError, RecursionError):
                    pass
            return out
        # The candidate's bytes, shown as the harness sent them before (bad bytes as U+FFFD).
        text = str(res.get("out", b""), "utf-8", "replace")
        if _more_elements(text, case["expected"]):
            out.update(status="wrong_answer", error="return value has more elements than the expected one",
                       got=text[:200])
            return out
        try:
            reply = json.loads(text)
        except (ValueError, RecursionError) as e:
            out.update(status="bad_reply", error=f"unreadable return value: {type(e).__name__}")
            return out
        if not isinstance(reply, dict) or not ({"ok"} == reply.keys() or "error" in reply):
            out.update(status="bad_reply", error="malformed reply")
            return out
        if "error" in reply:
            out.update(status="exception", error=str(reply["error"])[:300])
            return out
        out["status"] = "ok"
        out["passed"] = values_equal(reply["ok"], case["expected"])
        if not out["passed"]:
            out["status"] = "wrong_answer"
            out["got"] = json.dumps(reply["ok"])[:200]
        return out
    if status != "ok":
        out["error"] = res.get("error") or status
        if "returncode" in res:
            out["returncode"] = res["returncode"]
        return out
    got = res.get("out", memoryview(b""))
    out["passed"] = _stdout_matches(got, _norm_stdout(case["expected_stdout"]))
    if not out["passed"]:
        # 200 characters take at most 800 bytes: decoding a prefix shows what the whole would.
        out.update(status="wrong_answer", got=str(got[:1024], "utf-8", "replace")[:200])
        if not _valid_utf8(got):
            # Shown with U+FFFD in place of the bad bytes, which never match an expected
            # output that holds U+FFFD itself: no invalid byte sequence is any expected text.
            out["error"] = "output is not valid UTF-8"
    return out


def _failure(case: Mapping) -> str:
    """A failed case for the reason: its status, with its error where that adds something (a
    timeout's error names the limit it hit, which says it all)."""
    status, error = case["status"], case.get("error")
    if not error or error == status:
        return status
    return error if status == "timeout" else f"{status} ({error})"


def grade_program(
    program: str,
    tests: Mapping | str,
    *,
    backend: str = "local",
    partial_credit: bool = False,
    limits: Limits | Mapping[str, Any] | None = None,
) -> Grade:
    """Run ``program`` against ``tests`` in the sandbox and grade it here.

    Score: 1.0 when every case passes, else 0.0, or the fraction passed with ``partial_credit``.
    ``Grade.details["cases"]`` has one entry per case; ``components["pass_frac"]`` the fraction.
    A sandbox failure (not the program's) is an infrastructure error: ``score=None``.
    """
    tests = validate_tests(tests)
    lim = _as_limits(limits)
    kind = tests["type"]
    cases = tests["cases"]
    job = {
        "mode": kind,
        "program": program,
        "entry_point": tests.get("entry_point"),
        "n_cases": len(cases),
        "case_s": lim.case_s,
        "case_wall_s": lim.case_wall_s if lim.case_wall_s is not None else 2 * lim.case_s,
        "budget_s": max(lim.wall_s - _REPORT_MARGIN_S, 0.1),
        "out_cap": min(lim.stdout_bytes // 2, 16 << 20),
    }
    nonce = secrets.token_hex(16).encode()
    body = marshal.dumps(job)
    stdin = [b"%d\n" % len(body), body]
    for c in cases:  # each read by the harness only when its case starts
        arg = marshal.dumps(c["args"] if kind == "function" else c["stdin"])
        stdin += [b"%d\n" % len(arg), arg]
    stdin.append(nonce)
    sandbox = get_sandbox(backend)
    # warm: the harness reads its job before doing anything, so it can be started ahead of time.
    try:
        run = sandbox.run([sandbox.python, "-I", "-S", "-c", _HARNESS], b"".join(stdin), lim, warm=True)
    except Exception as e:  # noqa: BLE001 - e.g. no free sandbox uid, fork EAGAIN, a Docker API error
        # Raised, it would take a whole grade_programs batch down with it.
        log.error("code sandbox (%s) failed: %s: %s", sandbox.name, type(e).__name__, e)
        return Grade.error(f"sandbox error: {type(e).__name__}: {e}")
    if not run.stdout.startswith(_START):
        # Nothing of the candidate ran: the sandbox failed, not the program. Only the missing
        # start byte decides it: once the harness has started, the candidate shares its uid and
        # stderr, so an exit status or a "bwrap: ..." line may be forged to dodge a 0.
        why = run.error or f"harness did not start (exit {run.returncode})"
        log.error("code sandbox (%s) failed: %s", sandbox.name, why)
        return Grade.error(f"sandbox error: {why}", details={"stderr": run.stderr[-2000:].decode("utf-8", "replace")})
    stderr_tail = run.stderr[-2000:].decode("utf-8", "replace")
    if run.timed_out:
        payload, why = None, f"wall-clock limit of the run ({lim.wall_s:g} s) exceeded: run killed"
    elif run.stdout_truncated:
        # Each case's output is capped on its own; together they may still pass the run's cap.
        payload, why = None, f"output limit of the run ({lim.stdout_bytes} bytes) exceeded: run killed"
    else:
        payload, why = read_result(run.stdout, nonce)
    if payload is None or "harness_error" in payload:
        why = why or f"harness error: {payload['harness_error']}"
        return Grade(0.0, reason=why, components={"pass_frac": 0.0},
                     details={"cases": [], "stderr": stderr_tail, "returncode": run.returncode})
    results = [_judge_case(kind, c, r) for c, r in zip(cases, payload["cases"])]
    n_pass = sum(r["passed"] for r in results)
    frac = n_pass / len(cases)
    score = frac if partial_credit else float(n_pass == len(cases))
    first_fail = next((f"case {i}: {_failure(r)}" for i, r in enumerate(results) if not r["passed"]), "")
    reason = f"{n_pass}/{len(cases)} cases passed" + (f"; first failure {first_fail}" if first_fail else "")
    return Grade(score, reason=reason, components={"pass_frac": frac},
                 details={"cases": results, "stderr": stderr_tail, "backend": sandbox.name})


def grade_programs(
    items: Iterable[tuple[str, Mapping | str]], *, workers: int | None = None, **kw: Any
) -> list[Grade]:
    """Grade many (program, tests) pairs in parallel; the sandbox bounds real concurrency."""
    items = list(items)
    sandbox = get_sandbox(kw.get("backend", "local"))
    n = workers or getattr(sandbox, "max_parallel", 2)
    with ThreadPoolExecutor(max_workers=n) as ex:
        return list(ex.map(lambda it: grade_program(it[0], it[1], **kw), items))


_FENCE_OPEN = re.compile(r"[ \t]*(`{3,}|~{3,})[ \t]*([\w+.-]*)[^\n]*")
_FENCE_CLOSE = re.compile(r"[ \t]*(`{3,}|~{3,})[ \t]*")


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """``(language, body)`` of every fenced block, in order, in time linear in ``text``.

    As in CommonMark, a block closes at the first later line that is a fence of the same
    character, at least as long, alone on its line; an opening fence that never closes is plain
    text. (A regex with a lazy body rescans the rest of the text from every unclosed fence:
    8,000 of them took seconds.)
    """
    lines = text.split("\n")
    closers: dict[str, list[tuple[int, int]]] = {"`": [], "~": []}  # char -> [(line, fence length)]
    for i, ln in enumerate(lines):
        m = _FENCE_CLOSE.fullmatch(ln)
        if m:
            closers[m.group(1)[0]].append((i, len(m.group(1))))
    # longest[c][k]: the longest closer of char c among closers[c][k:], to skip unclosable fences.
    longest = {c: list(itertools.accumulate(reversed([n for _, n in cl]), max))[::-1] + [0] for c, cl in closers.items()}
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(lines):
        m = _FENCE_OPEN.fullmatch(lines[i])
        if m:
            c, n = m.group(1)[0], len(m.group(1))
            cl = closers[c]
            k = bisect.bisect_right(cl, (i, 1 << 30))
            if longest[c][k] >= n:
                while cl[k][1] < n:  # closers skipped here lie inside this block: linear overall
                    k += 1
                j = cl[k][0]
                body = "\n".join(lines[i + 1 : j])
                out.append((m.group(2).lower(), body + "\n" if j > i + 1 else ""))
                i = j + 1
                continue
        i += 1
    return out
_PY_LANGS = {"python", "py", "python3", "py3"}


def extract_code(completion: str, *, final_only: bool = True, allow_untagged: bool = True) -> str | None:
    """The last fenced Python block of the final section (after the last ``</think>``).

    Falls back to the last untagged fence when no block is tagged Python. ``None``: no code.
    """
    from thinkgym.verifiers.extract import ExtractConfig, final_section

    text = final_section(completion, ExtractConfig(final_section_only=final_only))
    if text is None:
        return None
    blocks = fenced_blocks(text)
    py = [b for lang, b in blocks if lang in _PY_LANGS]
    if py:
        return py[-1]
    untagged = [b for lang, b in blocks if not lang]
    return untagged[-1] if (allow_untagged and untagged) else None


# Version 2: scores changed (output that is not valid UTF-8 never matches, even an expected
# U+FFFD; tests holding a lone surrogate are refused; control characters no longer count 6
# times against the run's output cap).
@register_grader("code", version="2", kwargs={"partial_credit": bool_arg, "backend": text_arg, "final_section_only": bool_arg,
                                              "limits": config_arg(Limits)})
def grade_code(completion: str, gold: Any, **meta: Any) -> Grade:
    """Run the completion's last fenced Python block against code tests in a sandbox."""
    partial = meta.get("partial_credit", False)
    backend = meta.get("backend", "local")
    limits = meta.get("limits")
    tests = validate_tests(gold)  # malformed gold is the caller's bug: raised, becomes score=None
    program = extract_code(completion, final_only=meta.get("final_section_only", True))
    if program is None or not program.strip():
        return Grade(0.0, reason="no fenced python code block in the final section", components={"pass_frac": 0.0})
    g = grade_program(program, tests, backend=backend, partial_credit=bool(partial), limits=limits)
    g.extracted = program
    return g
