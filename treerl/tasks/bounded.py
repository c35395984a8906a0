"""Run a function in a child process with a wall-clock bound per call; a call that runs over kills the child.

The child is a fresh `python -c` that imports `module:function` and talks length-prefixed pickles over its
stdin/stdout, so it never re-imports the caller's script (as multiprocessing's spawn would).
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
    """`worker(*args, timeout=s)` returns fn(*args), or `default` when it raises or runs longer than s seconds.

    fn (a module-level function) runs in a child process started on first use and restarted after a
    timeout, so no input can hang the caller, whatever C code fn ends up in.
    """

    def __init__(self, fn: Callable[..., Any], default: Any = None, warmup: tuple = ()):
        """`warmup`: arguments of a first call the child makes before it reports ready, so that the lazy
        imports of fn do not count against a real call's bound."""
        self.target = f"{fn.__module__}:{fn.__qualname__}"
        self.default = default
        self.warmup = warmup
        self.process: subprocess.Popen[bytes] | None = None
        self.timeouts = 0
        atexit.register(self.stop)

    def _start(self) -> None:
        child = f"from treerl.tasks.bounded import serve; serve({self.target!r}, {self.warmup!r})"
        self.process = subprocess.Popen([sys.executable, "-c", child],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
        if self._response(STARTUP_TIMEOUT_S) != (True, "ready"):
            self.stop()
            raise RuntimeError(f"the worker process for {self.target} did not start")

    def _response(self, timeout: float) -> tuple[bool, Any] | None:
        """The child's next frame, or None when none starts within `timeout` seconds or the child died."""
        assert self.process is not None and self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        if not ready:
            return None
        try:
            return read_frame(self.process.stdout)
        except (EOFError, pickle.UnpicklingError):
            return None

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            assert self.process.stdin is not None and self.process.stdout is not None
            self.process.stdin.close()
            self.process.stdout.close()
        self.process = None

    def __call__(self, *args: Any, timeout: float) -> Any:
        if self.process is None or self.process.poll() is not None:
            self._start()
        assert self.process is not None and self.process.stdin is not None
        write_frame(self.process.stdin, args)
        response = self._response(timeout)
        if response is None:
            self.timeouts += 1
            self.stop()
            return self.default
        ok, value = response
        return value if ok else self.default


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
