"""Thread control for the codec's CPU work: one intra-op thread while a codec runs."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["cpu_single_threaded"]

_THREADS_LOCK = threading.Lock()


@contextmanager
def cpu_single_threaded(on_cpu: bool) -> Iterator[None]:
    """Run CPU codec work on one intra-op thread, then restore the caller's setting.

    Why: the codec's tensors are small (B_g is tens to hundreds of KB); threads buy nothing there,
    and on busy cores OpenMP barriers make each small LAPACK call 100-1000x slower (measured on 2
    loaded cores: a batched SVD of 12 x [96, 8] took 0.4 ms on one thread and 105 ms on two). The
    lock keeps concurrent encodes (in-process meshes) from restoring each other's setting in builds
    where the thread count is process-wide rather than per thread (OpenMP keeps it per thread).
    """
    if not on_cpu:
        yield
        return
    with _THREADS_LOCK:
        previous = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(previous)
