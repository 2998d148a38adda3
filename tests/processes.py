"""Processes started by tests: each in a process group of its own, killed when the test ends, passed or not.

``seqrec train --nproc 2`` starts torchrun, which starts the ranks; killing only the direct child (what
``subprocess.run`` does on a timeout) would leave torchrun and the ranks running, holding the CPUs and
their ports while the next tests run. Killing the process group ends all of them.

Children get ``PYTHONFAULTHANDLER=1``: a rank that aborts (SIGABRT from a C++ ``std::terminate``) or
crashes prints every Python thread's stack to its stderr, which :func:`failure` puts into the assertion.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

# Lines of a child's stderr that say why it died; kept even when the output is too long to show whole.
_CLUES = ("terminate called", "what():", "Fatal Python error", "Signal ", "exitcode", "Error", "error:",
          "Traceback", "Current thread", "Thread 0x")
_SHOW = 12000  # characters of output shown whole; beyond that, the head, the clue lines and the tail


def child_env(**extra: str) -> dict[str, str]:
    """The test process's environment for a child: faulthandler on, one intra-op thread unless given."""
    env = dict(os.environ)
    env.update(PYTHONFAULTHANDLER="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.update(extra)
    return env


def failure(done: subprocess.CompletedProcess, what: str = "") -> str:
    """An assertion message for a child that failed: its command, return code and stderr (and stdout)."""
    code = done.returncode
    how = f"killed by signal {-code} ({signal.Signals(-code).name})" if code < 0 else f"exit status {code}"
    head = f"{what + ': ' if what else ''}{' '.join(map(str, done.args[:8]))} ... ended with {how}"
    return f"{head}\n--- stderr ---\n{_shorten(done.stderr or '')}\n--- stdout ---\n{_shorten(done.stdout or '')}"


def _shorten(text: str) -> str:
    if len(text) <= _SHOW:
        return text
    clues = [line for line in text.splitlines() if any(c in line for c in _CLUES)]
    return "\n".join([text[:3000], "[...] lines that say why:", *clues[-80:], "[...] the end:", text[-5000:]])


@contextmanager
def process_group(argv: list[str], **popen_kwargs) -> Iterator[subprocess.Popen]:
    """``Popen(argv)`` as the leader of a new process group; on exit the whole group is killed and reaped."""
    proc = subprocess.Popen(argv, start_new_session=True, **popen_kwargs)
    try:
        yield proc
    finally:
        kill_group(proc)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILLs every process left in ``proc``'s group (the leader's children too) and reaps the leader."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:  # the group is empty: everything ended by itself
        pass
    proc.wait()


def run(argv: list[str], *, timeout: float, **popen_kwargs) -> subprocess.CompletedProcess:
    """Like ``subprocess.run(argv, capture_output=True, text=True, timeout=timeout)``, but a timeout or an
    error kills the whole process group, and a timeout fails with the output so far."""
    with process_group(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen_kwargs) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            done = subprocess.CompletedProcess(argv, -signal.SIGKILL, out, err)
            raise AssertionError(failure(done, f"did not end within {timeout} s")) from None
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def _spawned(index: int, fn, args: tuple) -> None:
    import faulthandler

    faulthandler.enable()  # a rank that aborts or crashes prints its Python stacks into the test's output
    fn(index, *args)


def spawn(fn, args: tuple, nprocs: int, *, timeout: float) -> None:
    """``torch.multiprocessing.spawn(fn, args, nprocs)`` with a deadline: a rank that fails or hangs past
    ``timeout`` seconds fails the test, and every rank still running is killed first, so none is left
    holding the CPUs, its port or the test's directory."""
    import time

    import torch.multiprocessing as mp

    context = mp.start_processes(_spawned, args=(fn, args), nprocs=nprocs, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    try:
        while not context.join(timeout=1.0):  # raises ProcessRaisedException / ProcessExitedException
            if time.monotonic() > deadline:
                raise AssertionError(f"{fn.__name__}: {nprocs} processes did not end within {timeout} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
            process.join()
