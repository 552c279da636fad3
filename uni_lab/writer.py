"""Store writes off the critical path: items go to disk on a background thread.

:class:`StoreWriter` stands in for a :class:`~uni_lab.store.Store` in the runner. Writes
(``write_items``, ``write_item``, ``write_inputs``) are queued to one worker thread, in order,
while the next batch computes (a new store is even created while the first batch computes:
:meth:`StoreWriter.create_in_background`). Every other call (reads, ``open_or_create``) first
waits for the queue to drain, so
the runner always reads what it wrote. An item is still written whole before its ``done``
flag, by the store itself, so a crash leaves at most unfinished items not-done.

It also measures the store's cost: ``main_s`` is the time the calling thread spent in store
calls (including waiting for the queue), ``busy_s`` the worker's time writing.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

QUEUED = ("write_item", "write_items", "write_inputs", "flush_staged")
# Queued writes (a batch of items each) held in memory at most; past that the runner waits.
# Eight absorb the burst of a completed map chunk's write (uni_lab.store.Store.staging: a few
# hundred milliseconds at 64², while batches of a small model take tens), bound memory on long
# runs, and limit what a killed run loses to the batches it had not yet written.
MAX_PENDING = 8

# Writers with writes possibly still queued, by store path: a new writer on the same path
# (a rerun after a failure, in the same process) first waits for them.
_LIVE: dict[Path, "StoreWriter"] = {}
_LIVE_LOCK = threading.Lock()


class StoreWriter:
    """A store whose writes happen on a background thread; see the module docstring."""

    def __init__(self, store, max_pending: int = MAX_PENDING):
        self.store = store
        self.max_pending = max(1, int(max_pending))
        self.main_s = 0.0
        self.busy_s = 0.0
        self.writes = 0
        self._pending: deque[Future] = deque()
        key = Path(store.path).resolve()
        with _LIVE_LOCK:
            previous = _LIVE.get(key)
        if previous is not None:
            previous.flush(raise_errors=False)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="uni-lab-store")
        with _LIVE_LOCK:
            _LIVE[key] = self
        self._key = key

    def _timed_write(self, name: str, args, kwargs) -> None:
        t0 = time.perf_counter()
        getattr(self.store, name)(*args, **kwargs)
        self.busy_s += time.perf_counter() - t0

    def _submit(self, name: str, args, kwargs) -> None:
        t0 = time.perf_counter()
        try:
            while self._pending and (self._pending[0].done() or len(self._pending) >= self.max_pending):
                self._pending.popleft().result()  # re-raises a failed write here, in the runner
            self._pending.append(self._pool.submit(self._timed_write, name, args, kwargs))
            self.writes += 1
        finally:
            self.main_s += time.perf_counter() - t0

    def create_in_background(self, ds, overwrite: bool = False) -> None:
        """``Store.open_or_create`` queued first: for a store a run creates from nothing, whose
        contents are known (nothing done), so the run need not wait for it; a failure is raised at
        the next write or flush."""
        self._submit("open_or_create", (ds, overwrite), {})

    def flush(self, raise_errors: bool = True) -> None:
        """Wait until every queued write is on disk; raise the first failure (if asked)."""
        t0 = time.perf_counter()
        first = None
        while self._pending:
            exc = self._pending.popleft().exception()
            first = first or exc
        self.main_s += time.perf_counter() - t0
        if first is not None and raise_errors:
            raise first

    def close(self) -> None:
        """Write what the store still holds (``Store.staging``), flush, stop the worker and raise a
        failed write, if any."""
        try:
            if hasattr(self.store, "flush_staged"):
                self._submit("flush_staged", (), {})
            self.flush()
        finally:
            self._pool.shutdown(wait=True)
            with _LIVE_LOCK:
                if _LIVE.get(self._key) is self:
                    del _LIVE[self._key]

    def timings(self) -> dict:
        return {"store_main_s": self.main_s, "store_busy_s": self.busy_s, "store_writes": self.writes}

    def __getattr__(self, name):
        if name == "store":  # not yet set (e.g. mid-construction): no recursion through it
            raise AttributeError(name)
        attr = getattr(self.store, name)
        if name in QUEUED:
            return lambda *args, **kwargs: self._submit(name, args, kwargs)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            self.flush()
            t0 = time.perf_counter()
            try:
                return attr(*args, **kwargs)
            finally:
                self.main_s += time.perf_counter() - t0

        return call
