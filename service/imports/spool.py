"""The folders where an import's downloaded chunks wait for a decode worker (pipeline.py).

One folder per import, in the system's temporary directory, named `vectorhive-import-<import id>-*`.
The process running the import holds an exclusive flock on the folder's `.owner` file for as long as
the folder exists; a process that dies, however it dies (SIGKILL, the OOM killer), releases it. So a
folder whose lock can be taken belongs to nobody, and the next import on the machine removes it. A
process id would not do: a restarted container's server often gets its predecessor's pid, and
containers that share /tmp do not share pids.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
import time
from pathlib import Path

PREFIX = "vectorhive-import-"
_OWNER = ".owner"
# A folder is made before its lock file: one without a lock file is being made, unless it is this
# old, when its maker died in between.
_MAKING_SECONDS = 60.0


class Spool:
    """An import's folder, locked by this process until close() removes it."""

    def __init__(self, import_id: object) -> None:
        sweep_abandoned()
        self.path = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{import_id}-"))
        self._owner: int | None = os.open(self.path / _OWNER, os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW, 0o600)
        fcntl.flock(self._owner, fcntl.LOCK_EX)

    def file(self, name: str) -> Path:
        return self.path / name

    def close(self) -> None:
        """Remove the folder and what is in it, then give up the lock (in that order: a sweep in
        between finds nothing to remove)."""
        if self._owner is None:
            return
        shutil.rmtree(self.path, ignore_errors=True)
        os.close(self._owner)
        self._owner = None


def sweep_abandoned(root: Path | None = None) -> int:
    """Remove the import folders nobody holds; -> how many. Never raises: a folder that cannot
    be read or removed (another user's, or gone meanwhile) is left alone."""
    removed = 0
    for folder in (root or Path(tempfile.gettempdir())).glob(f"{PREFIX}*"):
        try:
            if folder.is_symlink() or not folder.is_dir():
                continue
            try:
                owner = os.open(folder / _OWNER, os.O_RDWR | os.O_NOFOLLOW)
            except FileNotFoundError:
                if time.time() - folder.stat().st_mtime > _MAKING_SECONDS:
                    shutil.rmtree(folder)
                    removed += 1
                continue
            try:
                fcntl.flock(owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its import is running
            else:
                shutil.rmtree(folder)
                removed += 1
            finally:
                os.close(owner)
        except OSError:
            continue
    return removed
