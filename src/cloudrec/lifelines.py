"""A child process that must not outlive its parent: Linux's ``PR_SET_PDEATHSIG``.

Mix processes, push processes and browsers each write or hold what their recording owns; a
killed worker's child that went on would race the worker's restart, which resumes the same
recording into the same spool. EOF on a pipe ends them too, but not while they hold the GIL
in FFmpeg or sit in a long encode."""

from __future__ import annotations

import contextlib
import ctypes
import signal

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """SIGKILL this process when its parent dies, even by SIGKILL (a no-op off Linux). Call it
    in the child: first thing in its main, or as ``preexec_fn`` before an exec."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
