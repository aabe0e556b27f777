"""Atomic file writes: write beside the target under a temporary name, then ``os.replace``.

A reader never sees a half-written file, and a failed write leaves nothing behind::

    with atomic_path(out_dir / "model.onnx") as tmp:   # tmp: out_dir/.model.<random>.tmp.onnx
        torch.onnx.export(module, (x,), tmp)            # any writer that takes a path
    atomic_write_text(out_dir / "report.json", text)
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; move it onto ``path`` if the block succeeds.

    The temporary name keeps ``path``'s suffix, for writers that check it (``torch.export.save``).
    If the block raises, the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    temporary = path.with_name(f".{path.stem}.{secrets.token_hex(4)}.tmp{path.suffix}")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
