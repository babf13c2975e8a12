"""Shared by every test module: no network, a port nothing answers on, and the rules of a kill-and-resume round."""

from __future__ import annotations

import os
import random
import signal
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

# No test touches the network: albumentations asks PyPI for a newer version when imported (while collecting, and
# in every train.py a test starts) unless this says not to.
os.environ["NO_ALBUMENTATIONS_UPDATE"] = "1"
# A shell without job control starts background commands (`cmd &`) with SIGINT ignored, and pytest would pass that
# on to every run it starts: train.py rightly leaves an ignored SIGINT ignored (cifar/stopping.py), so the tests of
# Ctrl-C would see nothing arrive. Python's own handler here; the processes the tests start get the default.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# Set it to the seed a failed test printed to draw the same kill delays again.
KILL_SEED_VARIABLE = "CIFAR_TEST_KILL_SEED"

T = TypeVar("T")


@pytest.fixture(scope="session")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-epoch run of the tiny net (7 steps an epoch), as train.py writes it, in fp32 (replay's promise) even
    where --mixed-precision auto would pick bf16. Tests read it; those that change a run change a shipped copy."""
    from tests.test_train import BASE, train
    from tests.tiny_data import write_tiny_cifar
    data = write_tiny_cifar(tmp_path_factory.mktemp("data") / "tiny")
    out = tmp_path_factory.mktemp("finished") / "run"
    done = train(*BASE, "--data-dir", data, "--epochs", "2", "--output-dir", out, "--mixed-precision", "no")
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A local TCP port that refuses connections at once: bound by this process, never listening, so no other
    process can take it while the test runs. Pointing the download URL at it is a machine without network."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


class KillMissed(Exception):
    """The process finished before the kill landed: the round tested nothing, and must be run again."""


class KillRounds:
    """Seeded, printed kill delays, and the guard that every kill-and-resume round passes.

    A round starts a process that saves checkpoints, waits until it has saved one, sleeps one of the delays (so
    that the kill lands at a different point of the work each time) and kills it. It counts only if the process
    was still running, hence died of the signal: :meth:`assert_killed` says so, raises :class:`KillMissed` where
    the process had already finished (retried by :meth:`retry`, a bounded number of times), and fails the test on
    any other exit. The seed is printed (pytest shows it with a failure); ``CIFAR_TEST_KILL_SEED=<seed>`` repeats
    its delays.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._rng = random.Random(seed)
        print(f"kill delays seeded with {seed}: rerun with {KILL_SEED_VARIABLE}={seed} to draw them again")

    def delay(self, max_delay: float) -> float:
        """The next delay in [0, max_delay] seconds, printed."""
        delay = self._rng.uniform(0.0, max_delay)
        print(f"kill delay {delay:.3f} s (seed {self.seed})")
        return delay

    def assert_killed(self, returncode: int, saved: bool, output: str = "", sig: int = signal.SIGKILL,
                      expected: int | None = None) -> None:
        """The round killed the process mid-run: a checkpoint existed before the signal (``saved``) and the
        process ended with ``expected`` (default ``-sig``, death by the signal). Exit 0 is a miss (KillMissed)."""
        expected = -sig if expected is None else expected
        # A run that finished (before a new checkpoint let the signal go out, or before it landed) tested nothing.
        if returncode == 0 and expected != 0:
            raise KillMissed(f"the process finished before {signal.Signals(sig).name} landed (seed {self.seed})")
        assert saved, f"no checkpoint existed when {signal.Signals(sig).name} was sent (seed {self.seed}):\n{output}"
        assert returncode == expected, (
            f"exit {returncode}, not {expected} ({signal.Signals(sig).name}; seed {self.seed}):\n{output}")

    def retry(self, scenario: Callable[[int], T], tries: int = 3) -> T:
        """``scenario(attempt)``, run again (attempt 1, 2, ...) while a kill in it missed, at most ``tries`` times
        in all; each attempt must start afresh (its own output folder). Never passes a scenario that missed."""
        for attempt in range(tries):
            try:
                return scenario(attempt)
            except KillMissed as miss:
                print(f"attempt {attempt}: {miss}; retrying with the next delays")
        pytest.fail(f"no attempt of {tries} killed its run mid-run (seed {self.seed}): the rounds tested nothing")


@pytest.fixture
def kill_rounds() -> KillRounds:
    seed = os.environ.get(KILL_SEED_VARIABLE)
    return KillRounds(int(seed) if seed else random.SystemRandom().randrange(2**32))

