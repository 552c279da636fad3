"""Shards and torchrun: the images split over processes give the store one process writes.

Two ranks under ``torchrun`` (gloo on CPU) each take a contiguous half of the images and
write their own chunks of one store; ``--shard i/n`` jobs do the same without a launcher.
Per-image seeds make the random draws (``ig:uniform``, ``uni``'s start) independent of the
split. With batches of one image the computations are identical, so the stores agree bitwise;
with larger batches they agree bitwise where a batch holds the same images, within the
stated tolerance elsewhere.
"""
from __future__ import annotations

import re

import pytest
from store_runs import TOTAL, assert_same_store, make_images, run_cli, run_inprocess

import uni_lab
from uni_lab.check import check_store
from uni_lab.distributed import Context, my_shard, parse_shard, shard_range

TORCHRUN = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m"]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("torchrun") / "imgs")


@pytest.fixture(scope="module")
def one_process(images, tmp_path_factory):
    """Uninterrupted one-process stores with batches of 1 and of 2."""
    root = tmp_path_factory.mktemp("one")
    for b in (1, 2):
        run_inprocess(images, root / f"b{b}.zarr", batch_size=b)
    return root


def test_shard_slices_partition_the_images():
    for count in (0, 1, 5, 6, 50_000):
        for n in (1, 2, 3, 7):
            parts = [list(shard_range(count, i, n)) for i in range(n)]
            assert sum(parts, []) == list(range(count))  # disjoint, complete, in order
            assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert parse_shard("1/4") == (1, 4) and parse_shard((0, 1)) == (0, 1) and parse_shard(None) is None
    # --shard 1/2 inside a 3-rank torchrun job: rank 2 takes slice 1*3+2 of 6
    assert my_shard((1, 2), Context(rank=2, world=3)) == (5, 6)
    for bad in ("2/2", "-1/3", "a/b", "1", "1/0"):
        with pytest.raises(uni_lab.InputError, match="--shard"):
            parse_shard(bad)


def test_two_shard_jobs_fill_one_store_like_one_process(images, one_process, tmp_path):
    out = tmp_path / "s.zarr"
    first = run_inprocess(images, out, batch_size=1, shard="0/2")
    assert (first.computed, first.shard) == (TOTAL // 2, (0, 2))
    assert check_store(out).done == TOTAL // 2
    second = run_inprocess(images, out, batch_size=1, shard=(1, 2))
    assert second.computed == TOTAL // 2
    assert_same_store(out, one_process / "b1.zarr", bitwise=True)
    again = run_inprocess(images, out, batch_size=1, shard="1/2")  # a rerun of a finished shard: nothing to do
    assert (again.computed, again.skipped) == (0, TOTAL // 2)


def test_torchrun_two_ranks_same_store_as_one_process(images, one_process, tmp_path):
    """Batches of 2: rank 0 batches (im0, im1), (im2), rank 1 (im3, im4), (im5); one process
    (im0, im1), (im2, im3), (im4, im5). Bitwise where the batch matches, RTOL/ATOL elsewhere.
    (Batches of 1, bitwise everywhere, are the --shard test above.)"""
    out = tmp_path / "d.zarr"
    p = run_cli(images, out, 2, launcher=TORCHRUN)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "shard 0/2" in p.stdout and "shard 1/2" in p.stdout
    assert p.stdout.count(f"({TOTAL // 2} items computed, 0 already done") == 2
    for rank in (0, 1):  # each rank logs its own throughput
        assert re.search(rf"uni-lab rank {rank}/2: {TOTAL // 2} items, 3 images in \d+ s \(.* items/s", p.stderr), p.stderr
    report = check_store(out)
    assert report.consistent and report.done == TOTAL, report.format()
    ref = one_process / "b2.zarr"
    assert_same_store(out, ref, bitwise=True, images=["im0", "im1"])
    assert_same_store(out, ref, bitwise=False)


@pytest.mark.slow
def test_torchrun_refused_store_fails_every_rank(images, one_process, tmp_path):
    """Rank 0 finds a store of another configuration: both ranks exit non-zero, naming the key."""
    import shutil

    out = tmp_path / "d.zarr"
    shutil.copytree(one_process / "b1.zarr", out)
    p = run_cli(images, out, 1, launcher=TORCHRUN, extra=["--seed", "4"])
    assert p.returncode != 0
    assert "differs in: seed" in p.stderr and "rank 0 could not prepare the store" in p.stderr
