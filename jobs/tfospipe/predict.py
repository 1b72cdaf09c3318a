"""Executor-side scoring: a single-node TensorFlow in each executor, the model loaded once per process.

Spark reuses its Python workers (``spark.python.worker.reuse``, on by default), so the cache below
lives as long as the executor's worker: every task after the first finds the model loaded.

On a root ``tf.io.gfile`` cannot reach (``s3://``, ``hdfs://``, ``abfs://``) the model is loaded from a
copy in the process's scratch directory (``scratch.local_copy``: one download per process, removed
at its exit). The TFRecord shards are read through ``fs`` on every root and parsed here (:func:`batches`).
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator

import numpy as np

from . import fs, schema, scratch, tfenv

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
        tfenv.prepare_tensorflow()
        from . import model as model_lib  # imports TensorFlow: only where a model is loaded, not in infer's driver

        _LOADED[key] = model_lib.load_serving(scratch.local_copy(path), image_shape)
        if on_load is not None:
            on_load()
    return _LOADED[key]


def batches(files: Iterable[str], image_shape: tuple[int, int],
            batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(images float32 [n,H,W,1], labels int64 [n] (-1 = none), row_ids int64 [n]) numpy batches.

    Reads the TFRecord shard ``files`` in order, on any root (schema.shard_records: streamed through
    ``fs``, gzip or plain, checksums checked; a mix of both is a ValueError, as tf.data's reader),
    ``batch_size`` records per batch across file boundaries (the last may be smaller), each batch
    parsed with ``tf.io.parse_example`` (schema.parse_batch); pixel values stay raw (0..pixel_max).

    Not ``tf.data``: two single-threaded TensorFlow processes on two cores (two executors) left the
    cores ~38% idle with a TFRecordDataset pipeline in the loop (2,435 rows/s each with the seed CNN
    on an AMD EPYC, 3,975 alone), and ran at full speed with this reader (3,820 each); see the README's
    inference benchmark section.
    """
    tfenv.prepare_tensorflow()
    import tensorflow as tf

    files = list(files)
    schema.compression_type(files)  # ValueError for a mix, as tf.data's reader

    def parsed(chunk):
        image, label, row_id = schema.parse_batch(tf.constant(chunk), image_shape)
        return image.numpy(), label.numpy(), row_id.numpy()

    chunk = []
    for path in files:
        for record in schema.shard_records(path, fs.open_read):
            chunk.append(record)
            if len(chunk) == batch_size:
                yield parsed(chunk)
                chunk = []
    if chunk:
        yield parsed(chunk)
