"""The record schema: CSV layout in, ``tf.train.Example`` out, and how TensorFlow reads it back.

Records are TensorFlowOnSpark's MNIST format, so TFoS's own example readers can read them:

    label   int64[1]     class id (absent in the ``score`` split, which has no labels)
    image   int64[H*W]   raw pixel values, row-major
    row_id  int64[1]     stable id of the source row (file name and line number), for predictions

The image shape and the pixel scale of a dataset version are in its conversion manifest
(``image_shape``, ``pixel_max``); every reader takes them from there. Encoding and TFRecord framing
need no TensorFlow (the convert job never imports it); parsing uses ``tf.io.parse_example``.
"""

import struct

import google_crc32c
import numpy as np

NUM_CLASSES = 10
SPLITS = ("train", "eval", "score")
SHARD_PATTERN = "part-*.tfrecord"


def shard_name(index):
    return f"part-{index:05d}.tfrecord"


def _varint(value):
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _packed_varints(matrix):
    """Each row of a non-negative int matrix as packed protobuf varints, built in bulk with numpy."""
    v = np.ascontiguousarray(matrix, dtype=np.uint64)
    groups = 1
    while v.size and int(v.max()) >> (7 * groups):
        groups += 1
    out = np.empty(v.shape + (groups,), np.uint8)
    size = np.ones(v.shape, np.int64)
    for g in range(groups):
        rest = v >> np.uint64(7 * (g + 1))
        out[..., g] = ((v >> np.uint64(7 * g)) & np.uint64(0x7F)) | np.where(rest > 0, np.uint64(0x80), np.uint64(0))
        size += rest > 0
    flat = out[np.arange(groups) < size[..., None]].tobytes()
    ends = np.cumsum(size.sum(axis=1)).tolist()
    return [flat[s:e] for s, e in zip([0] + ends[:-1], ends)]


def _len_field(tag, payload):
    return tag + _varint(len(payload)) + payload


def _int64_entry(key, packed):
    """One ``Features.feature`` map entry: key -> Feature{int64_list{packed values}}."""
    feature = _len_field(b"\x1a", _len_field(b"\x0a", packed))
    return _len_field(b"\x0a", _len_field(b"\x0a", key) + _len_field(b"\x12", feature))


def encode_examples(pixels, labels=None, row_ids=None):
    """Serialized ``tf.train.Example`` of each row, in bulk from numpy arrays.

    Byte for byte what ``SerializeToString(deterministic=True)`` gives (map entries sorted by key;
    tests/unit/test_schema_model.py proves it against the protobuf API and ``tf.io.parse_example``),
    so the same row always gives the same bytes.
    """
    images = _packed_varints(pixels)
    labels = None if labels is None else np.asarray(labels).tolist()
    row_ids = None if row_ids is None else np.asarray(row_ids).tolist()
    out = []
    for i, image in enumerate(images):
        entries = _int64_entry(b"image", image)
        if labels is not None:
            entries += _int64_entry(b"label", _varint(labels[i]))
        if row_ids is not None:
            entries += _int64_entry(b"row_id", _varint(row_ids[i]))
        out.append(_len_field(b"\x0a", entries))
    return out


def _masked_crc(data):
    crc = google_crc32c.value(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord_frame(record):
    """One record in TFRecord framing: length, masked CRC32C of the length, data, masked CRC32C of the data."""
    length = struct.pack("<Q", len(record))
    return length + struct.pack("<I", _masked_crc(length)) + record + struct.pack("<I", _masked_crc(record))


def tfrecord_payloads(data):
    """The records in the bytes of an uncompressed TFRecord file (framing not re-checked)."""
    offset, end = 0, len(data)
    while offset < end:
        (length,) = struct.unpack_from("<Q", data, offset)
        start = offset + 12
        yield data[start:start + length]
        offset = start + length + 4


def feature_spec(num_pixels):
    import tensorflow as tf
    return {
        "image": tf.io.FixedLenFeature([num_pixels], tf.int64),
        "label": tf.io.FixedLenFeature([1], tf.int64, default_value=[-1]),
        "row_id": tf.io.FixedLenFeature([1], tf.int64, default_value=[-1]),
    }


def parse_batch(serialized, image_shape):
    """Parse a batch of serialized Examples into (image float32 [N,H,W,1], label int64 [N], row_id int64 [N]).

    ``label`` is -1 for unlabeled rows. Pixels stay raw: the model scales them (see model.py).
    """
    import tensorflow as tf
    h, w = image_shape
    parsed = tf.io.parse_example(serialized, feature_spec(h * w))
    image = tf.reshape(tf.cast(parsed["image"], tf.float32), [-1, h, w, 1])
    return image, tf.reshape(parsed["label"], [-1]), tf.reshape(parsed["row_id"], [-1])


def image_shape_of(manifest):
    h, w = manifest["image_shape"]
    return int(h), int(w)
