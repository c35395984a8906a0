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
    """`worker(*args, timeout=s)` returns fn(*args), or `default` when it raises or runs longer
    than s seconds.

    fn (a module-level function) runs in a child process, so no input can hang the caller, whatever
    C code fn ends up in. A call that runs over kills its child. A spare child, started with the
    first and again whenever a spare takes over, waits warmed up: the call after a timeout goes to
    it instead of waiting for a new child to start (python, fn's imports and the warm-up take
    seconds), so each call takes at most its bound. Only the first call (and the first after
    `stop`), or a call after timeouts that came faster than a child starts, waits for a child to
    start (at most STARTUP_TIMEOUT_S) before its bound begins; a call never has less than its bound,
    however loaded the machine.
    """

    def __init__(self, fn: Callable[..., Any], default: Any = None, warmup: tuple = ()):
        """`warmup`: arguments of a first call the child makes before it reports ready, so that the
        lazy imports of fn do not count against a real call's bound."""
        self.target = f"{fn.__module__}:{fn.__qualname__}"
        self.default = default
        self.warmup = warmup
        self.process: subprocess.Popen[bytes] | None = None
        """The child that serves calls; it has reported ready."""
        self.spare: subprocess.Popen[bytes] | None = None
        """The next child, started ahead; it may still be starting."""
        self.timeouts = 0
        atexit.register(self.stop)

    def _spawn(self) -> subprocess.Popen[bytes]:
        child = f"from treerl.tasks.bounded import serve; serve({self.target!r}, {self.warmup!r})"
        return subprocess.Popen(
            [sys.executable, "-c", child], stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0
        )

    def _serving(self) -> subprocess.Popen[bytes]:
        """The child for the next call: the one serving, else the spare (a new child if there is
        none or it died), waited for until it reports ready. A new spare starts at once."""
        if self.process is not None and self.process.poll() is None:
            return self.process
        end(self.process)
        self.process = None
        if self.spare is None or self.spare.poll() is not None:
            end(self.spare)
            self.spare = self._spawn()
        child, self.spare = self.spare, self._spawn()
        if response(child, STARTUP_TIMEOUT_S) != (True, "ready"):
            end(child)
            self.stop()
            raise RuntimeError(f"the worker process for {self.target} did not start")
        self.process = child
        return child

    def stop(self) -> None:
        """End both children."""
        end(self.process)
        end(self.spare)
        self.process = self.spare = None

    def __call__(self, *args: Any, timeout: float) -> Any:
        child = self._serving()
        assert child.stdin is not None
        write_frame(child.stdin, args)
        answer = response(child, timeout)
        if answer is None:
            self.timeouts += 1
            end(child)
            self.process = None
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
