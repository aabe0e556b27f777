"""Thread counts are a decision, not an accident (DESIGN.md 3a).

torch's default is one OpenMP thread per core, and those threads spin while they wait. When
another process takes a core, a spinning thread waits a whole scheduler slice for its partner:
on a shared 2-core machine the sample CNN's forward went from 0.2 ms to 100 ms. So every run
works on a stated number of intra-op threads (``threads`` in the pipeline, default 1; raise it
on a machine of your own), for tracing, fine-tuning and measuring alike, and the report says
which::

    with torch_threads(4) as used:   # torch.set_num_threads(4) inside, the previous count after
        ...
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def torch_threads(threads: int | None) -> Iterator[int]:
    """Use ``threads`` intra-op threads inside the block (None: leave torch's setting); yields the count."""
    import torch

    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)
