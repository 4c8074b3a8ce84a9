"""A process of its own that runs writes handed to it, one at a time (``file_writer``).

A thread's formatting shares the interpreter's lock with the E-step's host, which sets
the pace of most iterations on a GPU; a process does not. The process is a fresh
interpreter (``python -c``) rather than a ``multiprocessing`` child: that would import
the caller's main module again, which a user's script without a ``__main__`` guard
cannot survive.

Messages both ways are pickles, each after its length (8 bytes, little-endian), so that
a task that cannot be read is an error handed back, not a broken stream. The process
reads this process's ``sys.path`` first and answers ``("ready", None)``; then, for each
task ``(folder, write, args, kwargs)`` (``folder``: the caller's working folder at the
time, against which relative paths resolve), it answers with its log records, then
``("done", None)`` or ``("error", exception)``. It ignores SIGINT (a Ctrl-C in the
terminal reaches the whole process group: the write on its way finishes, as on a
thread), sees no GPU (``CUDA_VISIBLE_DEVICES`` empty: what it is given must be on the
host, ``file_writer.on_host``) and runs one CPU thread per library (the writes' arrays
are small; the cores are the job's). It imports what a task needs when the task
arrives: torch with the first tensor.
"""

import logging
import os
import pickle
import subprocess
import sys
import traceback
from collections.abc import Callable
from typing import IO, Any

__all__ = ["WriterProcess", "serve"]

_BOOT = (
    "import signal; signal.signal(signal.SIGINT, signal.SIG_IGN); "
    "import pickle, sys; sys.path[:] = pickle.loads(sys.stdin.buffer.read("
    "int.from_bytes(sys.stdin.buffer.read(8), 'little'))); "
    "from cryorefine.refine.writer_process import serve; serve()"
)


# no GPU, and one thread for torch's and numpy's libraries (module docstring)
_ENVIRONMENT = {
    "CUDA_VISIBLE_DEVICES": "",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
}


def _send(channel: IO[bytes], message: object) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    channel.write(len(data).to_bytes(8, "little") + data)
    channel.flush()


def _receive(channel: IO[bytes]) -> bytes:
    """One message's bytes; EOFError where the stream ends."""
    header = channel.read(8)
    size = int.from_bytes(header, "little")
    data = channel.read(size) if len(header) == 8 else b""
    if len(header) < 8 or len(data) < size:
        raise EOFError
    return data


class _Records(logging.Handler):
    """Sends each log record to the parent, its message formatted (arguments may not pickle)."""

    def __init__(self, channel: IO[bytes]) -> None:
        super().__init__()
        self._channel = channel

    def emit(self, record: logging.LogRecord) -> None:
        record.msg, record.args, record.exc_info = record.getMessage(), None, None
        _send(self._channel, ("log", record))


def _picklable(error: BaseException) -> BaseException:
    """``error`` if it pickles and comes back, else a RuntimeError with its text."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")


def serve() -> None:
    """The process's loop: run each task from standard input until it closes."""
    tasks = sys.stdin.buffer
    channel = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # a stray print, from Python or C, goes to stderr, not into the channel
    sys.stdout = sys.stderr
    # a process of its own, with no CLI to set its logging: every record goes to the parent
    root = logging.getLogger()
    root.handlers[:] = [_Records(channel)]
    root.setLevel(logging.DEBUG)
    try:
        _send(channel, ("ready", None))
        while True:
            try:
                data = _receive(tasks)
            except EOFError:
                return
            try:
                folder, write, args, kwargs = pickle.loads(data)
                os.chdir(folder)
                write(*args, **kwargs)
            except Exception as error:  # handed back, raised in the parent
                error = _picklable(error)
                error.add_note("in the file-writing process:\n" + traceback.format_exc())
                _send(channel, ("error", error))
            else:
                _send(channel, ("done", None))
    except BrokenPipeError:  # the parent has gone: nothing is waiting for the answer
        return


class WriterProcess:
    """The parent's end: starts the process, and runs one task at a time in it (``run``)."""

    def __init__(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-c", _BOOT],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, **_ENVIRONMENT},
        )
        assert self._process.stdin is not None
        assert self._process.stdout is not None
        self._tasks, self._answers = self._process.stdin, self._process.stdout
        self._ready = False
        _send(self._tasks, list(sys.path))

    def run(self, write: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Run ``write(*args, **kwargs)`` in the process and wait for it.

        Its log records go to this process's loggers of the same names. Raises the write's
        own error (a RuntimeError with its text where it cannot be rebuilt here), an error of
        pickling what it is given, or a RuntimeError where the process has ended.
        """
        if not self._ready:
            self._answer()
            self._ready = True
        try:  # pickled whole before a byte is written: an error of pickling breaks nothing
            _send(self._tasks, (os.getcwd(), write, args, kwargs))
        except BrokenPipeError:
            self._ended()
        self._answer()

    def _answer(self) -> None:
        """Relay log records until the process says it is ready or done; raise its error."""
        while True:
            try:
                kind, value = pickle.loads(_receive(self._answers))
            except EOFError:
                self._ended()
            if kind == "log":
                logger = logging.getLogger(value.name)
                if logger.isEnabledFor(value.levelno):
                    logger.handle(value)
            elif kind == "error":
                raise value
            else:
                return

    def _ended(self) -> None:
        code = self._process.wait()
        raise RuntimeError(
            f"the file-writing process ended unexpectedly (exit code {code}); "
            "its standard error, above, says why"
        )

    def close(self) -> None:
        """Close its input (it ends after the task on its way) and wait for it."""
        try:
            self._tasks.close()
        except BrokenPipeError:
            pass
        self._answers.read()  # what it still says: nobody waits for it
        self._process.wait()
        self._answers.close()

    @property
    def exit_code(self) -> int | None:
        """The process's exit code once it has ended, else None."""
        return self._process.poll()
