"""Processes started by tests: each in a process group of its own, killed when the test ends, passed or not.

``seqrec train --nproc 2`` starts torchrun, which starts the ranks; killing only the direct child (what
``subprocess.run`` does on a timeout) would leave torchrun and the ranks running, holding the CPUs and
their ports while the next tests run. Killing the process group ends all of them.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager


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
            raise AssertionError(f"{' '.join(argv[:6])} ... did not end within {timeout} s:\n{err[-3000:]}") from None
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)
