"""A serving worker's life: it dies with the process that started it.

BentoML's arbiter starts each worker in a session of its own, so a signal to ``driftloop
serve``'s process group never reaches the workers; an orphaned worker would go on answering with
``/readyz`` 200. :func:`die_with_parent` (called in every worker, :mod:`service.app`) stops the
worker when its parent goes. It lives with the service, so a Bento served by plain ``bentoml
serve`` has it too; ``driftloop serve`` (:mod:`driftloop.launch`) uses the same ``prctl`` for the
``bentoml serve`` process it starts.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable

log = logging.getLogger("driftloop.service")
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _prctl() -> Callable[..., int] | None:
    """libc's ``prctl`` (Linux), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
    prctl.restype = ctypes.c_int
    return prctl


def die_with_parent(parent: int, *, grace_s: float, poll_s: float = 1.0,
                    deathsig: signal.Signals | None = signal.SIGTERM) -> threading.Thread:
    """Stop this process when its parent, ``parent`` (the pid it was started by, read as early as
    possible), exits: SIGTERM, so that its graceful shutdown runs; if it still runs ``grace_s``
    seconds later, it exits at once (exit status 1).

    On Linux the kernel sends ``deathsig`` the moment the parent dies (``PR_SET_PDEATHSIG``; None:
    not asked for). A watchdog thread also polls the parent pid every ``poll_s`` seconds: it
    sends the SIGTERM itself where the kernel did not (elsewhere than Linux, or a parent that died
    before this call), and enforces ``grace_s``. The kernel's signal follows the *thread* that
    forked this process, not its process: it suits parents that fork from their main thread, as
    BentoML's arbiter and ``driftloop serve`` do. Call this from the main thread: the kernel
    keeps the request with the calling thread.
    """
    signalled = False
    if deathsig is not None and (prctl := _prctl()) is not None:
        signalled = prctl(PR_SET_PDEATHSIG, int(deathsig), 0, 0, 0) == 0
    if os.getppid() != parent:  # gone already: the kernel had nobody to signal for
        signalled = False

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        log.warning("the parent process %d is gone: stopping this process (%d)", parent, os.getpid())
        if not signalled:
            os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace_s)
        log.error("still running %gs after its parent %d exited: process %d exits now", grace_s, parent,
                  os.getpid())
        logging.shutdown()
        os._exit(1)

    thread = threading.Thread(target=watch, name=f"die-with-parent-{parent}", daemon=True)
    thread.start()
    return thread
