"""Executor-side scoring: a single-node TensorFlow in each executor, the model loaded once per process.

Spark reuses its Python workers (``spark.python.worker.reuse``, on by default), so the cache below
lives as long as the executor's worker: every task after the first finds the model loaded.

On a root ``tf.io.gfile`` cannot reach (``s3://``, ``hdfs://``, ``abfs://``) the model is loaded from a
copy in the process's scratch directory (``scratch.local_copy``: one download per process, removed
at its exit) and the TFRecord shards are read through ``fs`` and parsed here, without copies.
"""

from __future__ import annotations

import os
from typing import Callable, Iterable, Iterator

import numpy as np

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from . import model as model_lib  # noqa: E402
from . import fs, schema, scratch  # noqa: E402

#: Serving functions loaded in this process, by (SavedModel path, image shape).
_LOADED = {}


def loaded_model(path: str, image_shape: tuple[int, int], on_load: Callable[[], None] | None = None
                 ) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The serving function of the SavedModel at ``path``, loaded on first use in this process.

    ``image_shape``: ``(H, W)``. The function maps images float32 [n, H, W, 1] to ``(probabilities
    float32 [n, 10], classes int64 [n])`` (model.load_serving). ``on_load`` is called once per actual
    load (not for a cached model). Raises model.SignatureError when the model does not have the
    serving signature for this shape, and what ``tf.saved_model.load`` raises when ``path`` holds no
    SavedModel (OSError and others). ``path`` may be on any root: one ``tf.io.gfile`` cannot reach is
    loaded from a local copy (scratch.local_copy, downloaded once per process).
    """
    key = (path, tuple(image_shape))
    if key not in _LOADED:
        _LOADED[key] = model_lib.load_serving(scratch.local_copy(path), image_shape)
        if on_load is not None:
            on_load()
    return _LOADED[key]


def batches(files: Iterable[str], image_shape: tuple[int, int],
            batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(images float32 [n,H,W,1], labels int64 [n] (-1 = none), row_ids int64 [n]) numpy batches.

    Reads the TFRecord shard ``files`` in order (all GZIP or all plain, schema.compression_type:
    ValueError for a mix), ``batch_size`` records per batch (the last may be smaller); pixel values
    stay raw (0..pixel_max). Shards on a root ``tf.io.gfile`` cannot reach are read through ``fs``
    (:func:`_streamed_batches`), with the same batches."""
    import tensorflow as tf
    files = list(files)
    if not all(scratch.tf_reachable(f) for f in files):
        yield from _streamed_batches(files, image_shape, batch_size)
        return
    ds = tf.data.TFRecordDataset(files, compression_type=schema.compression_type(files)).batch(batch_size)
    ds = ds.map(lambda s: schema.parse_batch(s, image_shape)).prefetch(2)
    for image, label, row_id in ds:
        yield image.numpy(), label.numpy(), row_id.numpy()


def _streamed_batches(files: list[str], image_shape: tuple[int, int],
                      batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """:func:`batches` for shards read through ``fs``: each file whole (one GET), its records split in
    Python (schema.tfrecord_payloads), ``batch_size`` records per batch across file boundaries."""
    import tensorflow as tf
    schema.compression_type(files)  # ValueError for a mix, as tf.data's reader

    def parsed(chunk):
        image, label, row_id = schema.parse_batch(tf.constant(chunk), image_shape)
        return image.numpy(), label.numpy(), row_id.numpy()

    chunk = []
    for path in files:
        for record in schema.tfrecord_payloads(fs.read_bytes(path), compressed=schema.is_compressed(path)):
            chunk.append(record)
            if len(chunk) == batch_size:
                yield parsed(chunk)
                chunk = []
    if chunk:
        yield parsed(chunk)
