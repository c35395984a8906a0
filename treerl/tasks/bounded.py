"""Run a function in a child process with a wall-clock bound per call; a call that runs over kills
the child, and a warm spare child takes the next call.

The child is a fresh `python -c` that imports `module:function` and talks length-prefixed pickles
over its stdin/stdout, so it never re-imports the caller's script (as
multiprocessing's spawn would).
"""

from __future__ import annotations

import atexit
import importlib
import os
import pickle
import select
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from typing import IO, Any

STARTUP_TIMEOUT_S = 120.0
HEADER = struct.Struct("<Q")


def write_frame(stream: IO[bytes], value: Any) -> None:
    data = pickle.dumps(value)
    stream.write(HEADER.pack(len(data)) + data)
    stream.flush()


def read_exactly(stream: IO[bytes], size: int) -> bytes:
    chunks = []
    while size:
        chunk = stream.read(size)
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def read_frame(stream: IO[bytes]) -> Any:
    (size,) = HEADER.unpack(read_exactly(stream, HEADER.size))
    return pickle.loads(read_exactly(stream, size))


class BoundedWorker:
    """`worker(*args, timeout=s)` returns fn(*args), or `default` when it raises or has not answered
    s seconds after the call.

    fn (a module-level function) runs in a child process, so no input can hang the caller, whatever
    C code fn ends up in. A call that runs over kills its child; a spare child, started ahead and
    warmed up, serves the next call, so that call does not wait for a new child to start (python,
    fn's imports and the warm-up take seconds) and every call but the first returns within its
    bound: waiting for a spare that is still starting counts against it. The first call (and the
    first after `stop`) waits up to STARTUP_TIMEOUT_S for its child. Invariant after each call:
    `spare` is a child started (it may still be starting); `process` is None or a child
    that reported ready.
    """

    def __init__(self, fn: Callable[..., Any], default: Any = None, warmup: tuple = ()):
        """`warmup`: arguments of a first call the child makes before it reports ready, so that the
        lazy imports of fn do not count against a real call's bound."""
        self.target = f"{fn.__module__}:{fn.__qualname__}"
        self.default = default
        self.warmup = warmup
        self.process: subprocess.Popen[bytes] | None = None
        self.spare: subprocess.Popen[bytes] | None = None
        self.timeouts = 0
        atexit.register(self.stop)

    def _spawn(self) -> subprocess.Popen[bytes]:
        child = f"from treerl.tasks.bounded import serve; serve({self.target!r}, {self.warmup!r})"
        return subprocess.Popen(
            [sys.executable, "-c", child], stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0
        )

    def _take_spare(self, timeout: float) -> bool:
        """Whether the spare reported ready within `timeout` seconds; it then serves, and a new
        spare starts. A dead spare is replaced first; one still starting stays the spare."""
        if self.spare is None or self.spare.poll() is not None:
            end(self.spare)
            self.spare = self._spawn()
        if response(self.spare, timeout) != (True, "ready"):
            return False
        self.process, self.spare = self.spare, self._spawn()
        return True

    def _serving(self, timeout: float) -> bool:
        """Whether a ready child can take a call: the running one, else the spare within `timeout`
        seconds (on the first call, within STARTUP_TIMEOUT_S or a RuntimeError)."""
        if self.process is not None and self.process.poll() is None:
            return True
        end(self.process)
        self.process = None
        if self.spare is not None:
            return self._take_spare(timeout)
        if not self._take_spare(STARTUP_TIMEOUT_S):
            self.stop()
            raise RuntimeError(f"the worker process for {self.target} did not start")
        return True

    def stop(self) -> None:
        """End both children."""
        end(self.process)
        end(self.spare)
        self.process = self.spare = None

    def _ask(self, args: tuple, deadline: float) -> tuple[bool, Any] | None:
        """The serving child's (ok, value) for `args` by `deadline` (time.monotonic), or None. A
        child that misses the deadline is ended; a call that waiting for the spare left no
        time is not sent at all."""
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        assert self.process is not None and self.process.stdin is not None
        write_frame(self.process.stdin, args)
        answer = response(self.process, left)
        if answer is None:
            end(self.process)
            self.process = None
        return answer

    def __call__(self, *args: Any, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        answer = self._ask(args, deadline) if self._serving(timeout) else None
        if answer is None:
            self.timeouts += 1
            return self.default
        ok, value = answer
        return value if ok else self.default


def response(child: subprocess.Popen[bytes], timeout: float) -> tuple[bool, Any] | None:
    """The child's next frame, or None when none starts within `timeout`
    seconds or the child died."""
    assert child.stdout is not None
    ready, _, _ = select.select([child.stdout], [], [], timeout)
    if not ready:
        return None
    try:
        return read_frame(child.stdout)
    except (EOFError, pickle.UnpicklingError):
        return None


def end(child: subprocess.Popen[bytes] | None) -> None:
    """Kill and reap a child (if any) and close its pipes."""
    if child is not None:
        child.kill()
        child.wait()
        assert child.stdin is not None and child.stdout is not None
        child.stdin.close()
        child.stdout.close()


def serve(target: str, warmup: tuple = ()) -> None:
    """The child's loop: read argument tuples, write (ok, result) frames."""
    module, _, name = target.partition(":")
    fn = getattr(importlib.import_module(module), name)
    if warmup:
        fn(*warmup)
    stdin, stdout = os.fdopen(0, "rb", buffering=0), os.fdopen(1, "wb", buffering=0)
    sys.stdout = sys.stderr  # stray prints from fn must not corrupt the frames
    write_frame(stdout, (True, "ready"))
    while True:
        try:
            args = read_frame(stdin)
        except EOFError:
            return
        try:
            write_frame(stdout, (True, fn(*args)))
        except Exception as error:  # the caller treats a failed call as `default`
            write_frame(stdout, (False, repr(error)))
