"""Stopping a run on a signal without losing work: the signal is remembered, the training loop acts on it.

The trainer installs a :class:`StopRequest` before anything else, so a signal that arrives while the data loads
or the net is built is not lost; the training loop reads it once per optimizer step, where every process can
finish its step and a checkpoint can be saved.

* SIGTERM (``kill``, schedulers, preemption) and SIGUSR1 (SLURM's "time is almost up", which also asks for a
  requeue) ask for a stop that ends with :data:`EXIT_STOPPED`.
* SIGINT (Ctrl-C, ``kill -INT``, ``timeout -s INT``) asks for the same stop, ending with :data:`EXIT_INTERRUPTED`.
  A second SIGINT while a stop is pending (the step is being finished or the checkpoint written) ends the process
  at once with :data:`EXIT_INTERRUPTED` and no clean-up; the checkpoint writer leaves the previous checkpoint
  intact. SIGINTs within :data:`REPEAT_WINDOW_S` of the first count as that one, because some senders deliver one
  interrupt twice (``timeout`` signals its command and then the command's process group). A SIGINT that is
  ignored when the request is installed (a background job of a non-interactive shell) stays ignored, as Python
  itself leaves it.

DataLoader workers run :func:`ignore_stop_signals` first: Ctrl-C and schedulers signal a whole process group, and
a worker that died of it would take away the batches its trainer needs to finish the step and save. Their trainer
calls :func:`end_workers_at_exit`, or it could not exit while an exception keeps its workers alive, and ends with
:func:`exit_process`, so a finished run cannot crash in the interpreter's teardown.
"""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing
import multiprocessing.util  # registers multiprocessing's exit handler now, so that ours is registered after it
import os
import signal
import sys
import time
from typing import Any, Callable, NoReturn

EXIT_STOPPED = 75  # EX_TEMPFAIL: "try again later", which is what a preempted job should do
EXIT_INTERRUPTED = 130  # 128 + SIGINT: what a shell reports for a command stopped by Ctrl-C
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
REPEAT_WINDOW_S = 1.0


class StopRequest:
    """The stop signals this process received since :meth:`install`, for the training loop to act on.

    Attributes:
        requested: the name of the first stop signal (``"SIGTERM"``, ``"SIGUSR1"``, ``"SIGINT"``), or None.
        requeue: a SIGUSR1 came: the job should go back to the scheduler's queue.
        interrupted: a SIGINT came: the run should end with :data:`EXIT_INTERRUPTED`.
    """

    def __init__(self, announce: Callable[[str], None] | None = None) -> None:
        """``announce`` receives a sentence for the user when a SIGINT is taken note of and just before a second
        one ends the process. It runs inside the signal handler, so it should only write (e.g. ``os.write``)."""
        self.requested: str | None = None
        self.requeue = False
        self.interrupted = False
        self._announce = announce
        self._first_interrupt: float | None = None
        self._owner: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        """Handle the stop signals in this process from now on (call it from the main thread)."""
        self._owner = os.getpid()
        for sig in STOP_SIGNALS:
            if sig == signal.SIGINT and signal.getsignal(sig) == signal.SIG_IGN:
                continue
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        """Give the signals back the handlers they had before :meth:`install`."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if os.getpid() != self._owner:  # a child forked before it set its own handlers (a DataLoader worker)
            return
        if signum == signal.SIGINT:
            now = time.monotonic()
            if self._first_interrupt is not None and now - self._first_interrupt < REPEAT_WINDOW_S:
                return
            if self.requested is not None:
                self._say("SIGINT again: stopping at once, without saving; the newest complete checkpoint is kept")
                os._exit(EXIT_INTERRUPTED)
            self._first_interrupt = now
            self._say("SIGINT: saving a checkpoint at the next step boundary, then stopping (Ctrl-C again stops "
                      "at once)")
        self.requested = self.requested or signal.Signals(signum).name
        self.requeue = self.requeue or signum == signal.SIGUSR1
        self.interrupted = self.interrupted or signum == signal.SIGINT

    def _say(self, text: str) -> None:
        if self._announce is not None:
            self._announce(text)


def ignore_stop_signals(worker_id: int) -> None:
    """A DataLoader ``worker_init_fn``: the worker ignores the stop signals, so the trainer alone decides when to
    stop, and its workers live until it has saved a checkpoint (they end when the trainer shuts them down or
    exits)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def end_workers_at_exit() -> None:
    """When the interpreter exits, end this process's daemonic multiprocessing children (DataLoader workers) with
    SIGKILL. multiprocessing's own exit handler ends them with SIGTERM and then waits for them: forever, for
    workers that ignore it. Workers still alive at exit are those an uncaught exception kept (its traceback
    holds the DataLoader iterator); ours runs first, since exit handlers run last-registered first."""
    atexit.register(_kill_daemonic_children)


def _kill_daemonic_children() -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # torch's handler would report each one as a crashed worker
    for child in multiprocessing.active_children():
        if child.daemon:
            child.kill()


def exit_process(code: int) -> NoReturn:
    """Exit with ``code`` after the exit handlers ran and the console is flushed, skipping the interpreter's
    teardown. torch leaks the gloo process group of a process that built a DistributedDataParallel (its worker
    threads outlive ``destroy_process_group``), and such a thread still freeing a finished collective's tensors
    needs the GIL; a thread that asks for it during teardown aborts the process ("terminate called without an
    active exception", SIGABRT) and fails a run that has written all its results. A console that is gone (the
    ``| tee`` a Ctrl-C ended) must not change the exit code."""
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)
