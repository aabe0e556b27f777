"""An output folder is one unit: a run's files appear together or not at all (DESIGN.md 3b).

A run writes into a hidden staging folder beside the output folder, then swaps it in with one
atomic rename (Linux ``renameat2(RENAME_EXCHANGE)``; elsewhere two renames). A run killed at any
moment therefore leaves the previous complete set of outputs or none, never a mix, and a reused
folder holds exactly the last run's files::

    folder = OutputFolder.open(Path("out/demo"), inputs=[model_path, data_path, pipeline_path])
    with folder:                          # discards the staging folder if the block raises
        write_files(folder.staging)       # out/.demo.prunecli-staging-<pid>-<random>/...
        folder.commit()                   # out/demo now holds exactly these files

The folder lists what prunecli wrote in ``MANIFEST``. ``open`` refuses, before any work, an
output path that is a file, that holds or lies inside one of the run's inputs, or a folder
holding files prunecli did not write (they are never deleted).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import secrets
import shutil
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

from prunecli.errors import InputError
from prunecli.model_io.atomic import atomic_write_text

MANIFEST = ".prunecli-manifest.json"
_STAGING = "prunecli-staging"
_RENAME_EXCHANGE = 2  # linux/fs.h


class OutputFolder:
    """The output folder of one run and the staging folder its files are written into first."""

    def __init__(self, path: Path, staging: Path) -> None:
        self.path = path
        self.staging = staging
        self._committed = False

    @classmethod
    def open(cls, path: Path, *, inputs: Iterable[Path]) -> OutputFolder:
        """Check ``path`` against the run's ``inputs`` and create an empty staging folder beside it."""
        path = Path(os.path.abspath(path))
        check_output_path(path, inputs=inputs)
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_abandoned_staging(path)
        staging = path.parent / f".{path.name}.{_STAGING}-{os.getpid()}-{secrets.token_hex(4)}"
        staging.mkdir()
        return cls(path, staging)

    @property
    def progress_path(self) -> Path:
        """A file beside the output folder for work that must survive a killed run (a sweep's points)."""
        return self.path.parent / f".{self.path.name}.prunecli-progress.json"

    def final_path(self, staged: Path) -> Path:
        """Where a file written into the staging folder will be once committed."""
        return self.path / Path(staged).relative_to(self.staging)

    def commit(self) -> None:
        """Write the manifest and swap the staging folder in place of the output folder."""
        files = sorted(str(p.relative_to(self.staging)) for p in self.staging.rglob("*") if p.is_file())
        atomic_write_text(self.staging / MANIFEST, json.dumps({"files": files}, indent=2) + "\n")
        _swap_in(self.staging, self.path)
        self._committed = True

    def __enter__(self) -> OutputFolder:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if not self._committed:
            shutil.rmtree(self.staging, ignore_errors=True)


def check_output_path(path: Path, *, inputs: Iterable[Path]) -> None:
    """Refuse an output folder that would clobber an input or delete files prunecli did not write."""
    real = Path(os.path.realpath(path))
    if real.exists() and not real.is_dir():
        raise InputError(f"output {path} is a file; pass a folder for -o (it is created if missing)")
    for source in inputs:
        source = Path(os.path.realpath(source))
        if source == real or real in source.parents:
            raise InputError(f"output folder {path} holds the run's input {source}; choose another -o")
        if source.is_dir() and source in real.parents:
            raise InputError(f"output folder {path} lies inside the run's input folder {source}; choose another -o")
    foreign = _foreign_files(real)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" (+{len(foreign) - 3} more)" if len(foreign) > 3 else "")
        raise InputError(
            f"output folder {path} holds files prunecli did not write ({shown}); choose another -o or move them away"
        )


def _foreign_files(folder: Path) -> list[str]:
    """Files under ``folder`` that are not listed in its manifest (all of them when there is none)."""
    if not folder.is_dir():
        return []
    present = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    try:
        written = set(json.loads((folder / MANIFEST).read_text(encoding="utf-8"))["files"])
    except (OSError, ValueError, KeyError, TypeError):
        written = set()
    return [name for name in present if name not in written]


def _remove_abandoned_staging(path: Path) -> None:
    """Delete staging folders of runs on ``path`` that were killed (their process is gone)."""
    for candidate in path.parent.glob(f".{path.name}.{_STAGING}-*"):
        pid = candidate.name.rsplit("-", 2)[-2]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(candidate, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _swap_in(staging: Path, path: Path) -> None:
    """Put ``staging`` at ``path``; the previous ``path`` folder, if any, is deleted after the swap."""
    if not path.exists():
        staging.rename(path)
    elif _rename_exchange(staging, path):
        shutil.rmtree(staging)  # now holds the previous outputs
    else:  # no atomic swap here (not Linux, old C library, or a file system without it): two renames
        retired = path.with_name(f".{path.name}.{_STAGING}-{os.getpid()}-retired")
        path.rename(retired)
        staging.rename(path)
        shutil.rmtree(retired)


def _rename_exchange(first: Path, second: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux renameat2); False when the OS cannot."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    cwd = -100  # AT_FDCWD: paths relative to the current folder, or absolute
    return renameat2(cwd, os.fsencode(first), cwd, os.fsencode(second), _RENAME_EXCHANGE) == 0
