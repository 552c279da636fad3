"""One writer of a store at a time: advisory ``flock`` on the store's folder.

The lock is on the directory: zarr replaces ``.zgroup`` when it adds variables (a lock on the
replaced file would not exclude a process that opened the new one), and a lock file inside the
store would be an unknown member of the zarr hierarchy. The OS releases it when the process
dies, so nothing stale is ever left behind. Runs hold it exclusive, or shared among ``--shard``
jobs and torchrun ranks (which write disjoint blocks); evaluations and repairs hold it exclusive.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

from .errors import StoreError

BUSY = ("'{path}' is being written by another uni-lab process (a run, an evaluation or a repair); wait for it "
        "to finish{more}.")


def flock(fd: int, exclusive: bool, path, more: str = "") -> None:
    """Lock the open folder ``fd`` without waiting; closes it and says who holds the store when taken."""
    import fcntl

    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        raise StoreError(BUSY.format(path=path, more=more)) from exc


def lock_folder(path: Path, exclusive: bool, shown=None, more: str = "") -> int:
    """An open descriptor of ``path`` holding the lock; closing it releases the lock."""
    fd = os.open(path, os.O_RDONLY)
    flock(fd, exclusive, shown or path, more)
    return fd


@contextmanager
def evaluation_lock(store):
    """Exclusive for the block: an evaluation (or repair) adds variables and rewrites the consolidated
    metadata, so it excludes runs and other evaluations."""
    if not store.exists():
        raise StoreError(f"'{store.path}' is not a uni_lab store; pass the --out of a `uni-lab run`.")
    fd = lock_folder(store.path, True)
    try:
        yield
    finally:
        os.close(fd)  # closing the last descriptor releases the lock
