"""Executor-side scoring: a single-node TensorFlow in each executor, the model loaded once per process.

Spark reuses its Python workers (``spark.python.worker.reuse``, on by default), so the cache below
lives as long as the executor's worker: every task after the first finds the model loaded.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from . import model as model_lib  # noqa: E402
from . import schema  # noqa: E402

_LOADED = {}


def loaded_model(path, image_shape, on_load=None):
    """The serving function of the SavedModel at ``path``, loaded on first use in this process."""
    key = (path, tuple(image_shape))
    if key not in _LOADED:
        _LOADED[key] = model_lib.load_serving(path, image_shape)
        if on_load is not None:
            on_load()
    return _LOADED[key]


def batches(files, image_shape, batch_size):
    """(images float32 [n,H,W,1], labels int64 [n] (-1 = none), row_ids int64 [n]) numpy batches."""
    import tensorflow as tf
    files = list(files)
    ds = tf.data.TFRecordDataset(files, compression_type=schema.compression_type(files)).batch(batch_size)
    ds = ds.map(lambda s: schema.parse_batch(s, image_shape)).prefetch(2)
    for image, label, row_id in ds:
        yield image.numpy(), label.numpy(), row_id.numpy()
