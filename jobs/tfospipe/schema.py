"""The record schema: CSV layout in, ``tf.train.Example`` out, and how TensorFlow reads it back.

Records are TensorFlowOnSpark's MNIST format, so TFoS's own example readers can read them:

    label   int64[1]     class id (absent in the ``score`` split, which has no labels)
    image   int64[H*W]   raw pixel values, row-major
    row_id  int64[1]     stable id of the source row (file name and line number), for predictions

The image shape and the pixel scale of a dataset version are in its conversion manifest
(``image_shape``, ``pixel_max``); every reader takes them from there.
"""

import tensorflow as tf

NUM_CLASSES = 10
SPLITS = ("train", "eval", "score")
SHARD_PATTERN = "part-*.tfrecord"


def shard_name(index):
    return f"part-{index:05d}.tfrecord"


def encode_example(pixels, label=None, row_id=None):
    """One row as serialized ``tf.train.Example`` bytes."""
    feature = {"image": tf.train.Feature(int64_list=tf.train.Int64List(value=pixels))}
    if label is not None:
        feature["label"] = tf.train.Feature(int64_list=tf.train.Int64List(value=[label]))
    if row_id is not None:
        feature["row_id"] = tf.train.Feature(int64_list=tf.train.Int64List(value=[row_id]))
    # deterministic: map entries sorted by key, so the same row always gives the same bytes
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(deterministic=True)


def feature_spec(num_pixels):
    return {
        "image": tf.io.FixedLenFeature([num_pixels], tf.int64),
        "label": tf.io.FixedLenFeature([1], tf.int64, default_value=[-1]),
        "row_id": tf.io.FixedLenFeature([1], tf.int64, default_value=[-1]),
    }


def parse_batch(serialized, image_shape):
    """Parse a batch of serialized Examples into (image float32 [N,H,W,1], label int64 [N], row_id int64 [N]).

    ``label`` is -1 for unlabeled rows. Pixels stay raw: the model scales them (see model.py).
    """
    h, w = image_shape
    parsed = tf.io.parse_example(serialized, feature_spec(h * w))
    image = tf.reshape(tf.cast(parsed["image"], tf.float32), [-1, h, w, 1])
    return image, tf.reshape(parsed["label"], [-1]), tf.reshape(parsed["row_id"], [-1])


def image_shape_of(manifest):
    h, w = manifest["image_shape"]
    return int(h), int(w)
