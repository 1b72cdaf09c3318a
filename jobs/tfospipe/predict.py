"""Executor-side scoring: a single-node TensorFlow in each executor, the model loaded once per process.

Spark reuses its Python workers (``spark.python.worker.reuse``, on by default), so the cache below
lives as long as the executor's worker: every task after the first finds the model loaded.
"""

from __future__ import annotations

import os
from typing import Callable, Iterable, Iterator

import numpy as np

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from . import model as model_lib  # noqa: E402
from . import schema  # noqa: E402

#: Serving functions loaded in this process, by (SavedModel path, image shape).
_LOADED = {}


def loaded_model(path: str, image_shape: tuple[int, int], on_load: Callable[[], None] | None = None
                 ) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The serving function of the SavedModel at ``path``, loaded on first use in this process.

    ``image_shape``: ``(H, W)``. The function maps images float32 [n, H, W, 1] to ``(probabilities
    float32 [n, 10], classes int64 [n])`` (model.load_serving). ``on_load`` is called once per actual
    load (not for a cached model). Raises model.SignatureError when the model does not have the
    serving signature for this shape, and what ``tf.saved_model.load`` raises when ``path`` holds no
    SavedModel (OSError and others).
    """
    key = (path, tuple(image_shape))
    if key not in _LOADED:
        _LOADED[key] = model_lib.load_serving(path, image_shape)
        if on_load is not None:
            on_load()
    return _LOADED[key]


def batches(files: Iterable[str], image_shape: tuple[int, int],
            batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(images float32 [n,H,W,1], labels int64 [n] (-1 = none), row_ids int64 [n]) numpy batches.

    Reads the TFRecord shard ``files`` in order (all GZIP or all plain, schema.compression_type:
    ValueError for a mix), ``batch_size`` records per batch (the last may be smaller); pixel values
    stay raw (0..pixel_max)."""
    import tensorflow as tf
    files = list(files)
    ds = tf.data.TFRecordDataset(files, compression_type=schema.compression_type(files)).batch(batch_size)
    ds = ds.map(lambda s: schema.parse_batch(s, image_shape)).prefetch(2)
    for image, label, row_id in ds:
        yield image.numpy(), label.numpy(), row_id.numpy()
