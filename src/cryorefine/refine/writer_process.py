"""A process of its own that runs writes handed to it, one at a time (``file_writer``).

A thread's formatting shares the interpreter's lock with the E-step's host, which sets
the pace of most iterations on a GPU; a process does not. The process is a fresh
interpreter (``python -c``) rather than a ``multiprocessing`` child: that would import
the caller's main module again, which a user's script without a ``__main__`` guard
cannot survive. It reads this process's ``sys.path`` first, then pickled tasks
``(folder, write, args, kwargs)`` on its standard input (``folder``: the caller's working
folder at the time, against which relative paths resolve), and answers each with pickled messages
on its standard output: log records, then ``("done", None)`` or ``("error", exception)``.
It never touches a device: what it is given is on the host (``file_writer.on_host``).
"""

import logging
import logging.handlers
import os
import pickle
import subprocess
import sys
import traceback
from collections.abc import Callable
from typing import IO, Any

__all__ = ["WriterProcess", "serve"]

_BOOT = "import pickle, sys; sys.path[:] = pickle.load(sys.stdin.buffer); " + (
    "from cryorefine.refine.writer_process import serve; serve()"
)


class _Records(logging.handlers.QueueHandler):
    """Sends each log record, made picklable, to the parent."""

    def __init__(self, channel: IO[bytes]) -> None:
        super().__init__(None)  # type: ignore[arg-type]
        self._channel = channel

    def enqueue(self, record: logging.LogRecord) -> None:
        _send(self._channel, ("log", record))


def _send(channel: IO[bytes], message: tuple[str, Any]) -> None:
    pickle.dump(message, channel, protocol=pickle.HIGHEST_PROTOCOL)
    channel.flush()


def _picklable(error: BaseException) -> BaseException:
    """``error`` if it pickles and comes back, else a RuntimeError with its text."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")


def serve() -> None:
    """The process's loop: run each task from standard input until it closes."""
    import torch  # the writes' own tensors are small: one thread, the GPU job keeps the rest

    torch.set_num_threads(1)
    tasks, channel = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # a stray print must not corrupt the channel
    root = logging.getLogger()
    root.handlers[:] = [_Records(channel)]
    root.setLevel(logging.INFO)
    while True:
        try:
            folder, write, args, kwargs = pickle.load(tasks)
        except EOFError:
            return
        try:
            os.chdir(folder)
            write(*args, **kwargs)
        except BaseException as error:  # handed back, raised in the parent
            error = _picklable(error)
            error.add_note("in the file-writing process:\n" + traceback.format_exc())
            _send(channel, ("error", error))
        else:
            _send(channel, ("done", None))


class WriterProcess:
    """The parent's end: starts the process, and runs one task at a time in it (``run``)."""

    def __init__(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-c", _BOOT], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        assert self._process.stdin is not None
        assert self._process.stdout is not None
        self._tasks, self._answers = self._process.stdin, self._process.stdout
        pickle.dump(list(sys.path), self._tasks)
        self._tasks.flush()

    def run(self, write: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Run ``write(*args, **kwargs)`` in the process and wait for it; its log records go
        to this process's loggers of the same names, and its error is raised here."""
        try:
            task = (os.getcwd(), write, args, kwargs)
            pickle.dump(task, self._tasks, protocol=pickle.HIGHEST_PROTOCOL)
            self._tasks.flush()
        except BrokenPipeError:
            self._ended()
        while True:
            try:
                kind, value = pickle.load(self._answers)
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
        raise RuntimeError(f"the file-writing process ended unexpectedly (exit code {code})")

    def close(self) -> None:
        """Close its input (it ends after the task on its way) and wait for it."""
        try:
            self._tasks.close()
        except BrokenPipeError:
            pass
        self._process.wait()
        self._answers.close()
