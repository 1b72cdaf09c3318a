"""Spark input mode's feed on a node (no Spark, no TensorFlow): a ``queue.Queue`` stands in for TFoS's
input queue and a plain class for its end-of-partition marker."""
import itertools
import queue

import pytest

from tfospipe import feed


class EndPartition:
    """Stands in for tensorflowonspark.marker.EndPartition."""


def rows(tag, n):
    return [f"{tag}{i}".encode() for i in range(n)]


def make(q, batch_size=2, **kw):
    kw = dict(dict(first_row_timeout=1.0, poll_seconds=0.01), **kw)
    return feed.Feed(q, EndPartition, batch_size, worker=3, **kw)


def test_rows_come_in_order_and_partition_ends_are_skipped():
    q = queue.Queue()
    for item in (rows("a", 3), EndPartition(), rows("b", 2), None):
        q.put(item)
    f = make(q)
    got = list(itertools.islice(f.blocks(), 2))
    assert got == [rows("a", 3), rows("b", 2)]
    assert (f.rows, f.replayed, f.ended) == (5, 0, False)
    assert q.unfinished_tasks == 1  # every item read is acknowledged (task_done); the end is still queued


def test_an_empty_queue_replays_a_batch_of_received_rows_instead_of_blocking():
    q = queue.Queue()
    q.put(rows("a", 3))
    f = make(q, batch_size=2)
    blocks = f.blocks()
    assert next(blocks) == rows("a", 3)
    # nothing queued: a batch of what it has, cycling through the received rows
    assert next(blocks) == [b"a0", b"a1"]
    assert next(blocks) == [b"a2", b"a0"]
    assert (f.rows, f.replayed, f.ended) == (3, 4, False)
    # a late partition arrives: it is fed as soon as it is there
    q.put(rows("b", 2))
    assert next(blocks) == rows("b", 2)
    assert (f.rows, f.replayed) == (5, 4)
    assert q.unfinished_tasks == 0


def test_the_end_of_the_feed_is_read_once_then_only_replays():
    q = queue.Queue()
    q.put(rows("a", 2))
    q.put(None)
    q.put(rows("late", 2))  # never read: the feed has ended
    f = make(q, batch_size=3)
    got = list(itertools.islice(f.blocks(), 3))
    assert got == [rows("a", 2), [b"a0", b"a1", b"a0"], [b"a1", b"a0", b"a1"]]
    assert (f.rows, f.replayed, f.ended) == (2, 6, True)
    assert q.qsize() == 1


def test_no_first_rows_within_the_timeout_is_an_error_naming_the_worker():
    f = make(queue.Queue(), first_row_timeout=0.05)
    with pytest.raises(RuntimeError, match=r"worker 3 received no training rows from Spark within 0.05s"):
        next(f.blocks())


def test_the_first_rows_get_the_long_wait_later_ones_the_short_poll():
    waits = []

    class Recording(queue.Queue):
        def get(self, block=True, timeout=None):
            waits.append(timeout)
            return super().get(block, timeout)

    q = Recording()
    q.put(rows("a", 1))
    f = make(q, first_row_timeout=7.0, poll_seconds=0.02)
    blocks = f.blocks()
    next(blocks)  # the first block: waited up to first_row_timeout
    next(blocks)  # dry: waited poll_seconds, then replayed
    next(blocks)  # still dry: a few ms only, then replayed
    assert waits == [7.0, 0.02, 0.001]


def test_the_replay_buffer_keeps_only_the_first_rows():
    q = queue.Queue()
    for item in (rows("a", 2), rows("b", 2), rows("c", 2), None):
        q.put(item)
    f = make(q, batch_size=5, replay_rows=3)
    got = list(itertools.islice(f.blocks(), 5))
    assert got[:3] == [rows("a", 2), rows("b", 2), rows("c", 2)]
    # whole blocks are kept while the buffer holds fewer than replay_rows rows: a and b, never c
    assert got[3] == [b"a0", b"a1", b"b0", b"b1", b"a0"]
    assert set(got[4]) <= {b"a0", b"a1", b"b0", b"b1"}
    assert (f.rows, f.replayed) == (6, 10)


def test_stop_terminates_the_feed_only_while_it_runs():
    calls = []
    running = queue.Queue()
    running.put(rows("a", 1))
    f = make(running)
    next(f.blocks())
    f.stop(lambda: calls.append("running"))
    ended = queue.Queue()
    for item in (rows("a", 1), None):
        ended.put(item)
    g = make(ended)
    list(itertools.islice(g.blocks(), 2))
    assert g.ended
    g.stop(lambda: calls.append("ended"))
    assert calls == ["running"]


@pytest.mark.parametrize("n, size, lengths", [(0, 4, []), (3, 4, [3]), (8, 4, [4, 4]), (9, 4, [4, 4, 1])])
def test_rows_are_grouped_into_blocks_of_the_block_size(n, size, lengths):
    data = rows("r", n)
    blocks = list(feed.feed_blocks(iter(data), size))
    assert [len(b) for b in blocks] == lengths
    assert [r for b in blocks for r in b] == data


def test_the_default_block_is_feed_block_rows():
    blocks = list(feed.feed_blocks(iter(rows("r", feed.FEED_BLOCK_ROWS + 1))))
    assert [len(b) for b in blocks] == [feed.FEED_BLOCK_ROWS, 1]
