"""feed: Spark input mode, how the train rows travel from Spark's partitions to a node's input pipeline.

The driver groups each partition's serialized ``tf.train.Example`` records into blocks of
``FEED_BLOCK_ROWS`` (:func:`feed_blocks`), TFoS's ``cluster.train`` puts them on each node's queue
(``TFNode.DataFeed``'s ``input`` queue, a multiprocessing manager's queue), and the node's input pipeline
reads them through :class:`Feed`, which never blocks the collective: a node whose queue is momentarily
empty replays rows it already received. No Spark and no TensorFlow here: the queue and TFoS's
end-of-partition marker type are passed in, so a ``queue.Queue`` stands in for TFoS's in tests.
"""

import itertools
from collections.abc import Callable, Iterable, Iterator
from queue import Empty
from typing import Protocol

from . import fs, schema

#: How long a node waits for its first rows, and the driver for the nodes once the feed ended (seconds).
FEED_TIMEOUT_SECONDS = 600
#: Spark mode feeds rows to the nodes in blocks: one queue round trip (TFoS's manager process) per
#: block instead of per row.
FEED_BLOCK_ROWS = 64
#: How long a node that has rows waits for more before it replays some (seconds), once per dry spell.
FEED_POLL_SECONDS = 0.5
#: Rows a node keeps to replay (a node's first rows, up to this many; at 8x8 images ~100 MB at most).
REPLAY_BUFFER_ROWS = 200_000


class FeedQueue(Protocol):
    """What :class:`Feed` needs of TFoS's ``input`` queue (``queue.Queue`` has it)."""

    def get(self, block: bool = True, timeout: float | None = None) -> object: ...

    def task_done(self) -> None: ...


def feed_blocks(rows: Iterable[bytes], size: int = FEED_BLOCK_ROWS) -> Iterator[list[bytes]]:
    """Group a partition's rows into lists of ``size`` rows (the last one shorter), the items Spark mode
    feeds."""
    block = []
    for row in rows:
        block.append(row)
        if len(block) == size:
            yield block
            block = []
    if block:
        yield block


def strided_payloads(files: list[str], offset: int, every: int) -> Iterator[bytes]:
    """Executor side: the serialized Examples of the TFRecord ``files`` (plain or gzip) in order, every
    ``every``-th from the ``offset``-th (0-based), as ``tf.data``'s ``shard(every, offset)`` keeps them."""
    payloads = itertools.chain.from_iterable(schema.shard_records(f, fs.open_read) for f in files)
    return itertools.islice(payloads, offset, None, every)


class Feed:
    """A node's end of the Spark feed: blocks of serialized Examples that never stall the collective.

    ``queue``: the node's input queue; its items are blocks (lists of bytes), ``end_partition`` instances
    (TFoS's ``marker.EndPartition``: a partition ended, skipped) and ``None`` (the end of the feed).
    ``batch_size``: rows per replayed block, one batch. ``worker``: the node's worker index, for errors.

    Counters, over every :meth:`blocks` iteration: ``rows`` fed from the queue, ``replayed`` rows
    (whole batches), ``ended`` once the end of the feed was read.
    """

    def __init__(self, queue: FeedQueue, end_partition: type, batch_size: int, worker: int,
                 first_row_timeout: float = FEED_TIMEOUT_SECONDS, poll_seconds: float = FEED_POLL_SECONDS,
                 replay_rows: int = REPLAY_BUFFER_ROWS):
        self.queue, self.end_partition = queue, end_partition
        self.batch_size, self.worker = batch_size, worker
        self.first_row_timeout, self.poll_seconds, self.replay_rows = first_row_timeout, poll_seconds, replay_rows
        self.rows, self.replayed, self.ended = 0, 0, False

    def blocks(self) -> Iterator[list[bytes]]:
        """Endless blocks of rows: what the queue holds, else a batch of rows already received.

        A node whose queue is momentarily empty (its partitions ran short, or the next one is still
        being scheduled) replays rows it already received instead of blocking: blocking would stall the
        all-reduce of every other node, whose feeding tasks could then never finish (a deadlock). It
        waits up to ``first_row_timeout`` s for its first block, then ``poll_seconds`` for the next one
        once per dry spell (a few ms while the spell lasts), and replays after the feed ended; the
        node's step budget, not the feed, ends training. The first ``replay_rows`` rows (whole blocks)
        are kept for replay.

        Raises RuntimeError when no rows came within ``first_row_timeout`` s.
        """
        seen, ended, replay, starving = [], False, 0, False
        while True:
            if not ended:
                item = self._next(has_rows=bool(seen), starving=starving)
                starving = item is Empty
                if item is None:  # end of feed
                    ended = self.ended = True
                    continue
                if not starving:
                    if isinstance(item, self.end_partition):
                        continue
                    self.rows += len(item)
                    if len(seen) < self.replay_rows:
                        seen.extend(item)
                    yield item
                    continue
            # replay a batch worth, then look at the queue again
            self.replayed += self.batch_size
            yield [seen[(replay + i) % len(seen)] for i in range(self.batch_size)]
            replay += self.batch_size

    def _next(self, has_rows: bool, starving: bool) -> object:
        """The next queue item (acknowledged), or ``Empty`` (the class) when none came in time."""
        # wait for the first row; then give a late partition a moment, once per dry spell
        wait = self.first_row_timeout if not has_rows else (0.001 if starving else self.poll_seconds)
        try:
            item = self.queue.get(block=True, timeout=wait)
        except Empty:
            if not has_rows:
                raise RuntimeError(f"worker {self.worker} received no training rows from Spark within "
                                   f"{self.first_row_timeout}s") from None
            return Empty
        self.queue.task_done()
        return item

    def stop(self, terminate: Callable[[], None]) -> None:
        """The node ran its step budget: skip the rest of the feed (``terminate``: TFoS's
        ``DataFeed.terminate``, which drains the queue so that the feeding Spark tasks end), unless the
        feed already ended."""
        if not self.ended:
            terminate()
