"""Every use of zarr's private API, in one place (``zarr.core.sync``, ``zarr.core.buffer``,
``Array.async_array``): the store needs zarr's event loop to write many chunks in one call and
to build a store's files in memory, and zarr 3 offers neither publicly.

``tests/test_zarr_io.py`` exercises each of these against the installed zarr, so an upgrade
that moves them fails there, by name, instead of somewhere inside a run.
"""
from __future__ import annotations

import asyncio


def metadata_files(ds, zarr_format: int) -> dict[str, bytes]:
    """The files of ``ds``'s empty store (metadata and coordinates), written by xarray and zarr into
    memory, then written in one go: on disk each of zarr's ~60 small writes would wait on its I/O
    thread."""
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync
    from zarr.storage import MemoryStore

    mem = MemoryStore()
    ds.to_zarr(mem, mode="w", compute=False, consolidated=True, zarr_format=zarr_format)

    async def dump():
        proto = default_buffer_prototype()
        return {key: (await mem.get(key, proto)).to_bytes() async for key in mem.list()}

    return sync(dump())


def assign(writes) -> None:
    """``arr[index] = value`` for every ``(arr, index, value)``, all in one call to zarr's event loop.

    One synchronous zarr call costs a few milliseconds of hand-over to its I/O thread; a batch
    of items touches a dozen variables, so the calls are gathered and the variables' chunk
    writes overlap. A chunk spans many images, and zarr writes part of a chunk by reading it,
    changing it and replacing the file whole (a temporary file renamed over it: a killed write
    leaves the old chunk); two writes into one chunk at once would each replace the other's, so
    the writes of one array go one after the other.
    """
    from zarr.core.sync import sync

    by_array: dict[str, list] = {}
    for arr, index, value in writes:  # by path: each group[name] lookup is a new Array object
        by_array.setdefault(arr.path, []).append((arr, index, value))

    async def one_array(items):
        for arr, index, value in items:
            await arr.async_array.setitem(index, value)

    async def run():
        await asyncio.gather(*(one_array(items) for items in by_array.values()))

    if writes:
        sync(run())
