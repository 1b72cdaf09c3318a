"""The lineage index of a dataset version: ``row_id`` -> source file and line, one Parquet part per
convert range under ``{root}/tfrecords/{version}/_lineage/`` (paths.LINEAGE_DIR), committed with the
shards. Written by the convert job; read by ``scripts/lineage.py``.
"""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import fs

#: Rows of the lineage index buffered per Parquet row group: ~36 bytes a row in memory (row id and line
#: int64, the split as a 5-character numpy string), so ~2.4 MB per group. At 1 << 20 a range of a 2 GB
#: CSV (860,000 rows) held its whole index and a worker's peak grew by ~110 MiB with the file
#: (bench/memory_bench.py).
LINEAGE_ROWS_PER_GROUP = 1 << 16


def lineage_name(group: str, shard: int) -> str:
    """File name of one range's part of the lineage index: ``rows-{labeled,score}-NNNNN.parquet``
    (never ``part-*``, so no shard glob matches it, and it sits under ``_lineage/``)."""
    return f"rows-{group}-{shard:05d}.parquet"


class LineageWriter:
    """Executor side: one range's part of the lineage index, a Parquet file with columns
    ``row_id`` int64, ``file`` string (the input's name relative to ``raw/{version}/``), ``line`` int64
    (1-based line number in the decompressed file, as the quarantine counts them) and ``split`` string.

    Rows are buffered and written as row groups of up to LINEAGE_ROWS_PER_GROUP rows, so memory stays
    bounded whatever the range's size. ``rows``: rows written so far.
    """

    COLUMNS = ("row_id", "file", "line", "split")

    def __init__(self, path: str, name: str):
        self.name, self.rows, self._pending, self._pending_rows = name, 0, [], 0
        self.schema = pa.schema([("row_id", pa.int64()), ("file", pa.string()), ("line", pa.int64()),
                                 ("split", pa.string())])
        self._sink = fs.open_write(path)
        self._writer = pq.ParquetWriter(self._sink, self.schema, compression="zstd")

    def add(self, row_ids: np.ndarray, lines: np.ndarray, splits: np.ndarray) -> None:
        """Index rows: ``row_ids``, ``lines`` int64 [n] and ``splits`` str [n] of one parsed block."""
        self._pending.append((np.asarray(row_ids, np.int64), np.asarray(lines, np.int64), np.asarray(splits)))
        self.rows += len(row_ids)
        self._pending_rows += len(row_ids)
        if self._pending_rows >= LINEAGE_ROWS_PER_GROUP:
            self._flush()

    def _flush(self):
        if not self._pending:
            return
        ids, lines, splits = (np.concatenate([p[i] for p in self._pending]) for i in range(3))
        self._pending, self._pending_rows = [], 0
        self._writer.write_table(pa.table([pa.array(ids), pa.repeat(pa.scalar(self.name, pa.string()), len(ids)),
                                           pa.array(lines), pa.array(splits.astype(str), pa.string())],
                                          schema=self.schema))

    def close(self) -> None:
        """Write the rows still buffered and close the file (closed even when the write fails)."""
        try:
            self._flush()
            self._writer.close()
        finally:
            self._sink.close()
