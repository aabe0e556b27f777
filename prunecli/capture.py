"""Capture what third-party code prints while it runs, so prunecli's own lines stay the whole output.

torch prints graph dumps to stderr when ``torch.export`` fails (from Python) and the TorchScript
ONNX exporter prints its IR on failure (from C++, straight to file descriptor 2). Neither goes
through logging or warnings, so the calls that do it run inside ``captured_output``, which takes
both the Python streams and the file descriptors 1 and 2::

    with captured_output() as captured:
        torch.onnx.export(...)
    captured.text   # whatever was printed; attach it to an error for --debug (``add_note``)
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass
class Captured:
    """The text printed inside a ``captured_output`` block (filled when the block ends)."""

    text: str = ""


@contextlib.contextmanager
def captured_output() -> Iterator[Captured]:
    """Inside the block, send Python's and the process's stdout and stderr into ``Captured.text``."""
    captured = Captured()
    python_streams = io.StringIO()
    with tempfile.TemporaryFile() as sink, _descriptors_to(sink.fileno()):
        try:
            with contextlib.redirect_stdout(python_streams), contextlib.redirect_stderr(python_streams):
                yield captured
        finally:
            sink.seek(0)
            captured.text = python_streams.getvalue() + sink.read().decode(errors="replace")


@contextlib.contextmanager
def _descriptors_to(target: int) -> Iterator[None]:
    """Point file descriptors 1 and 2 at ``target`` inside the block (nothing if they can't be duplicated)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    try:
        saved = [os.dup(1), os.dup(2)]
    except OSError:
        yield
        return
    try:
        os.dup2(target, 1)
        os.dup2(target, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for descriptor in saved:
            os.close(descriptor)
