"""Files in places other programs can touch (the user's cache and state folders, documents
given on the command line): read only regular files of a bounded size, never a FIFO or a
device; write through a temporary file in the same folder and a rename, so that no reader ever
sees half a file."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path


class NotARegularFile(ValueError):
    """A path that is a FIFO, a device, a folder or a file over the size limit."""


def read_regular(path: str | os.PathLike, limit: int) -> bytes:
    """The bytes of a regular file of at most `limit` bytes (links are followed to their target,
    which must be one too). Opened non-blocking: opening a FIFO must not wait for a writer."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotARegularFile("is not a regular file")
        if st.st_size > limit:
            raise NotARegularFile(f"is {st.st_size:,} bytes, more than {limit:,}")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise NotARegularFile(f"grew past {limit:,} bytes while read")
    return data


def write_atomic(path: str | os.PathLike, text: str, mode: int = 0o600, *, overwrite: bool = True) -> Path:
    """Write `text` to `path` through a temporary file in the same folder (fsync, rename), so no
    reader ever sees half a file; the folder must exist. `mode` is the file's exact mode (0o600
    for anything holding secrets). With overwrite=False an existing file, or one that appears
    meanwhile, is never replaced: FileExistsError. Any other OSError (a read-only folder, a full
    disk) is the caller's to word; nothing is left behind."""
    import tempfile  # only writers pay for it: reading a profile must stay quick

    p = Path(path)
    if not overwrite and (p.exists() or p.is_symlink()):
        raise FileExistsError(errno.EEXIST, "File exists", str(p))
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        if overwrite:
            os.replace(tmp, p)
        else:
            _link_new(tmp, p)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):      # the rename itself durable
        dfd = os.open(p.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    return p


def _link_new(tmp: str, p: Path) -> None:
    """Put `tmp` at `p` only if nothing is there: a hard link is atomic and never clobbers."""
    try:
        os.link(tmp, p)
    except FileExistsError:
        raise
    except OSError:                 # a filesystem without hard links
        if p.exists() or p.is_symlink():
            raise FileExistsError(errno.EEXIST, "File exists", str(p)) from None
        os.replace(tmp, p)
    else:
        os.unlink(tmp)
