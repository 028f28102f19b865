"""Output that never loses data (docs/architecture.md, "Capture I/O").

A regular destination is written to a temporary file beside it and renamed into place only on
success; on any failure or interrupt only that temporary file is removed — never the
destination, never anything this program did not create. Standard output (``-``), devices,
FIFOs and sockets are streamed and never removed.

The temporary file's blocks are reserved ahead of the writes (``reserve``; fallocate(2) with
FALLOC_FL_KEEP_SIZE) and the reserve past the end released at commit: ext4 otherwise starts
writing back every delayed-allocation block of a file renamed over an existing one, inside the
rename (its ``auto_da_alloc`` mount option), which measured 70-490 ms for a 150 MB capture
written over the last run's; with the blocks reserved the rename took 7-9 ms. The output is not
synced to disk in either case (docs/architecture.md, "Capture I/O").
"""
from __future__ import annotations

import os
import stat
import sys
import tempfile
from typing import BinaryIO, Optional


class OutputRefused(ValueError):
    """The output path names the input or the SA file."""


def _same(a, b) -> bool:
    try:
        return os.path.samefile(a, b)
    except (OSError, TypeError, ValueError):
        return False


_RESERVE_MIN = 16 << 20
_RESERVE_MAX = 256 << 20


class SafeOutput:
    """``with SafeOutput(path, protect=[...]) as out: out.file.write(...)``; ``commit()`` or a
    clean exit of the block renames the temporary file into place."""

    def __init__(self, path, *, protect=()):
        self.path = "-" if path == "-" else os.fspath(path)
        for other, what in protect:
            if other is not None and other != "-" and self.path != "-" and _same(self.path, other):
                raise OutputRefused(f"{self.path!r} is the {what}; choose another output file")
        self.file: Optional[BinaryIO] = None
        self._temp: Optional[str] = None
        self._reserved = 0  # bytes of the temporary file's blocks reserved; -1: not possible
        self.streamed = self.path == "-" or self._is_special(self.path)

    @staticmethod
    def _is_special(path: str) -> bool:
        try:
            mode = os.stat(path).st_mode
        except OSError:
            return False
        return not stat.S_ISREG(mode)

    def __enter__(self) -> "SafeOutput":
        if self.path == "-":
            self.file = sys.stdout.buffer
        elif self.streamed:
            self.file = open(self.path, "wb")
        else:
            directory = os.path.dirname(os.path.abspath(self.path))
            fd, self._temp = tempfile.mkstemp(
                prefix=f".{os.path.basename(self.path)}.", suffix=".tmp", dir=directory)
            self.file = os.fdopen(fd, "wb")
            try:  # the destination's permissions if it exists, else the umask's
                mode = os.stat(self.path).st_mode & 0o7777
            except OSError:
                umask = os.umask(0)
                os.umask(umask)
                mode = 0o666 & ~umask
            os.chmod(self._temp, mode)
        return self

    def reserve(self, end: int) -> None:
        """Reserve the temporary file's blocks up to at least ``end`` bytes, in steps that
        double (at least 16 MiB, at most 256 MiB at once); nothing for a streamed output, and
        nothing more once the filesystem refuses (or where the kernels are not built)."""
        if self._temp is None or self.file is None or self._reserved < 0 \
                or end <= self._reserved:
            return
        from ..host.tx_frame import kernels
        fp = kernels()
        if fp is None:
            self._reserved = -1
            return
        step = max(end - self._reserved, min(max(self._reserved, _RESERVE_MIN), _RESERVE_MAX))
        if fp.reserve_blocks(self.file.fileno(), self._reserved, step) != 0:
            self._reserved = -1  # ENOSPC, EOPNOTSUPP...: the writes say what is wrong
            return
        self._reserved += step

    def commit(self) -> None:
        if self.file is None:
            return
        self.file.flush()
        if self._temp is not None:
            if self._reserved > 0:  # release the reserve past the end
                self.file.truncate(self.file.tell())
            self.file.close()
            os.replace(self._temp, self.path)
            self._temp = None
        elif self.path != "-":
            self.file.close()
        self.file = None

    def abort(self) -> None:
        """Remove only the temporary file this object made."""
        if self._temp is not None:
            try:
                if self.file is not None:
                    self.file.close()
            except OSError:
                pass
            try:
                os.unlink(self._temp)
            except OSError:
                pass
            self._temp = None
        elif self.file is not None and self.path != "-":
            try:
                self.file.close()
            except OSError:
                pass
        self.file = None

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


__all__ = ["OutputRefused", "SafeOutput"]
