"""StopRequest: stop signals are remembered for the training loop; a second Ctrl-C ends the process at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from cifar.stopping import EXIT_INTERRUPTED, REPEAT_WINDOW_S, StopRequest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def announced() -> Iterator[tuple[StopRequest, list[str]]]:
    said: list[str] = []
    stop = StopRequest(announce=said.append)
    stop.install()
    try:
        yield stop, said
    finally:
        stop.uninstall()


def test_sigterm_and_sigusr1_are_remembered_and_only_sigusr1_asks_for_a_requeue(
        announced: tuple[StopRequest, list[str]]) -> None:
    stop, said = announced
    assert stop.requested is None
    os.kill(os.getpid(), signal.SIGTERM)
    assert (stop.requested, stop.requeue, stop.interrupted) == ("SIGTERM", False, False)
    os.kill(os.getpid(), signal.SIGUSR1)
    assert (stop.requested, stop.requeue, stop.interrupted) == ("SIGTERM", True, False)
    assert said == []


def test_a_first_sigint_is_remembered_and_announced(announced: tuple[StopRequest, list[str]]) -> None:
    stop, said = announced
    os.kill(os.getpid(), signal.SIGINT)
    assert (stop.requested, stop.requeue, stop.interrupted) == ("SIGINT", False, True)
    assert len(said) == 1 and "checkpoint" in said[0] and "Ctrl-C again" in said[0]


def test_uninstall_gives_back_the_previous_handlers() -> None:
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)}
    stop = StopRequest()
    stop.install()
    assert all(signal.getsignal(sig) != handler for sig, handler in before.items())
    stop.uninstall()
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_a_sigint_ignored_at_install_stays_ignored() -> None:
    """As Python leaves it: a background job of a non-interactive shell is not meant to see the terminal's Ctrl-C."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    stop = StopRequest()
    try:
        stop.install()
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) != signal.SIG_DFL
    finally:
        stop.uninstall()
        signal.signal(signal.SIGINT, previous)


@pytest.mark.slow
def test_a_second_sigint_ends_the_process_at_once_with_130_but_a_repeat_of_the_first_does_not() -> None:
    """In a subprocess: the second SIGINT ends the process it is sent to. The stop request reads a fake clock, so
    that neither a busy machine nor the test's own pace decides which SIGINT is a repeat."""
    script = textwrap.dedent(f"""
        import os, signal, time, types
        import cifar.stopping
        from cifar.stopping import StopRequest
        now = [1000.0]
        cifar.stopping.time = types.SimpleNamespace(monotonic=lambda: now[0])
        stop = StopRequest(announce=lambda text: print("announce:", text, flush=True))
        stop.install()
        os.kill(os.getpid(), signal.SIGINT)
        now[0] += {REPEAT_WINDOW_S} - 0.01
        os.kill(os.getpid(), signal.SIGINT)  # the same interrupt delivered twice, as `timeout -s INT` may
        print("pending:", stop.requested, flush=True)
        now[0] += 0.02  # past the window since the first
        os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C, e.g. while the checkpoint is being written
        time.sleep(10)
        print("still running", flush=True)
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == EXIT_INTERRUPTED, result
    lines = result.stdout.splitlines()
    assert lines[1] == "pending: SIGINT" and "still running" not in result.stdout, lines
    assert len(lines) == 3 and "next step boundary" in lines[0] and "at once" in lines[2], lines
    assert result.stderr == ""


@pytest.mark.slow
def test_workers_that_ignore_sigterm_do_not_keep_a_failing_process_from_exiting() -> None:
    """multiprocessing's exit handler would SIGTERM the worker and wait for it (here a minute); ours kills it."""
    script = textwrap.dedent("""
        import multiprocessing, time
        from cifar.stopping import end_workers_at_exit, ignore_stop_signals

        def work(ready):
            ignore_stop_signals(0)
            ready.set()
            time.sleep(60)

        end_workers_at_exit()
        context = multiprocessing.get_context("fork")
        ready = context.Event()
        context.Process(target=work, args=(ready,), daemon=True).start()
        ready.wait()
        raise RuntimeError("an error nobody catches")
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 1 and "an error nobody catches" in result.stderr, result
    assert "Exception ignored" not in result.stderr, result.stderr


def test_exit_process_runs_the_exit_handlers_flushes_and_skips_the_teardown() -> None:
    """The teardown is where gloo's leaked worker threads abort a finished multi-process run; exit handlers (W&B's,
    multiprocessing's, ours) and buffered output must survive skipping it."""
    script = textwrap.dedent("""
        import atexit, sys
        from cifar.stopping import exit_process

        class FreedAtTeardown:
            def __del__(self):
                sys.stdout.write("freed at teardown")
                sys.stdout.flush()

        kept = FreedAtTeardown()
        atexit.register(lambda: sys.stdout.write("exit handler ran; "))
        sys.stdout.write("buffered, no newline; ")
        sys.stderr.write("error text")
        exit_process(3)
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 3, result
    assert result.stdout == "buffered, no newline; exit handler ran; " and result.stderr == "error text", result
