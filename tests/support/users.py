"""Running a block of a test as a user without root's powers (root opens a 0400 file for writing where a
gateway's user cannot)."""

from __future__ import annotations

import contextlib
import os


@contextlib.contextmanager
def unprivileged(directory):
    """Runs the block as a user without root's powers, in `directory` (its own): root opens a 0400 file for
    writing where a gateway's user cannot. Not root: as the user it is."""
    if os.geteuid() != 0:
        yield
        return
    os.chown(directory, 65534, 65534)
    os.seteuid(65534)  # the real uid stays root: set back below
    try:
        yield
    finally:
        os.seteuid(0)
