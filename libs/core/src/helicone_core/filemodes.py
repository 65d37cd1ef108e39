"""Owner-only files and directories for everything a service keeps on disk (journal, bodies, key
snapshots, pid files): directories 0700, files 0600, whatever the process umask is.

The mode given to os.open/os.mkdir is filtered through the umask (a umask can only take bits
away, but an odd one such as 0277 leaves an unwritable file), so every helper sets the mode again
explicitly with chmod.
"""

from __future__ import annotations

import os
from pathlib import Path

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def private_dir(path: Path) -> Path:
    """Creates `path` and any missing parents as 0700 directories; an existing `path` is set to 0700."""
    path = Path(path)
    missing = []
    current = path
    while not current.is_dir():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, PRIVATE_DIR_MODE)
        except FileExistsError:  # created concurrently (another writer of the same tree)
            if not directory.is_dir():
                raise
        os.chmod(directory, PRIVATE_DIR_MODE)
    if not missing:
        os.chmod(path, PRIVATE_DIR_MODE)
    return path


def open_private(path: Path, flags: int = os.O_WRONLY | os.O_CREAT | os.O_TRUNC) -> int:
    """os.open with mode 0600 (set again with fchmod, umask or not); returns the descriptor."""
    fd = os.open(path, flags, PRIVATE_FILE_MODE)
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_private(path: Path, data: bytes) -> None:
    """Writes a small owner-only file in place (pid files, the bootstrap key)."""
    with os.fdopen(open_private(path), "wb") as f:
        f.write(data)
