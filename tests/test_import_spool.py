"""service/imports/spool.py: an import's folder of downloaded chunks belongs to whoever holds its
lock; the folders nobody holds (their process died) are swept, nothing else is."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from service.imports import spool as spool_module
from service.imports.spool import PREFIX, Spool, sweep_abandoned


def test_a_folder_lives_as_long_as_its_import_and_a_sweep_leaves_it_alone(tmp_path: Path) -> None:
    spool = Spool("a1")
    try:
        spool.file("chunk-0").write_bytes(b"x" * 1000)
        assert spool.path.name.startswith(f"{PREFIX}a1-")
        sweep_abandoned()  # another import starting meanwhile
        assert spool.file("chunk-0").read_bytes() == b"x" * 1000
    finally:
        spool.close()
    assert not spool.path.exists()
    spool.close()  # twice is harmless


def test_the_folder_of_a_killed_process_is_swept_and_only_that(tmp_path: Path) -> None:
    # A process that takes a folder's lock and is then killed, as the OOM killer would.
    code = (
        "import os, sys, time\n"
        "from service.imports.spool import Spool\n"
        "spool = Spool('killed')\n"
        "spool.file('chunk-3').write_bytes(b'half a chunk')\n"
        "print(spool.path, flush=True)\n"
        "time.sleep(60)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    dead = Path(child.stdout.readline().strip())
    assert dead.is_dir()
    sweep_abandoned()
    assert dead.is_dir(), "a live process's folder was swept"
    child.kill()
    child.wait(timeout=10)
    mine = Spool("alive")
    try:
        assert not dead.exists()  # swept by the next import
        assert mine.path.is_dir()
    finally:
        mine.close()


def test_folders_being_made_and_strangers_are_left_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A folder without its lock file yet: being made, unless it is old.
    young = tmp_path / f"{PREFIX}young-1"
    young.mkdir()
    old = tmp_path / f"{PREFIX}old-1"
    old.mkdir()
    an_hour_ago = time.time() - 3600
    os.utime(old, (an_hour_ago, an_hour_ago))
    # A symlink with the prefix (to a folder that must survive), a file with the prefix, and a lock
    # file that is itself a symlink.
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "keep").write_text("keep")
    (tmp_path / f"{PREFIX}link").symlink_to(precious)
    (tmp_path / f"{PREFIX}file").write_text("not a folder")
    trap = tmp_path / f"{PREFIX}trap"
    trap.mkdir()
    (trap / ".owner").symlink_to(precious / "keep")
    # One held by someone else's lock.
    held = tmp_path / f"{PREFIX}held"
    held.mkdir()
    owner = os.open(held / ".owner", os.O_CREAT | os.O_RDWR)
    fcntl.flock(owner, fcntl.LOCK_EX)
    try:
        assert sweep_abandoned(tmp_path) == 1
        assert young.is_dir() and not old.exists() and held.is_dir() and trap.is_dir()
        assert (precious / "keep").read_text() == "keep"
        assert (tmp_path / f"{PREFIX}file").exists()
    finally:
        os.close(owner)
    assert sweep_abandoned(tmp_path) == 1  # its lock released: now nobody's
    assert not held.exists()
    monkeypatch.setattr(spool_module, "_MAKING_SECONDS", -1.0)
    assert sweep_abandoned(tmp_path) == 1 and not young.exists()
