"""The record schema: CSV layout in, ``tf.train.Example`` out, and how TensorFlow reads it back.

Records are TensorFlowOnSpark's MNIST format, so TFoS's own example readers can read them:

    label   int64[1]     class id (absent in the ``score`` split, which has no labels)
    image   int64[H*W]   raw pixel values, row-major
    row_id  int64[1]     stable id of the source row (file name and line number), for predictions

The image shape and the pixel scale of a dataset version are in its conversion manifest
(``image_shape``, ``pixel_max``); every reader takes them from there. Encoding and TFRecord framing
need no TensorFlow (the convert job never imports it); parsing uses ``tf.io.parse_example``.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, BinaryIO, Iterable, Iterator

import google_crc32c
import numpy as np

if TYPE_CHECKING:  # encoding and framing need no TensorFlow
    import tensorflow as tf

#: Classes of the label (digits 0-9): the model's output width.
NUM_CLASSES = 10
#: The splits a conversion writes (``score`` only when the version has unlabeled input).
SPLITS = ("train", "eval", "score")
#: Glob of a split's shard files (:func:`shard_name`).
SHARD_PATTERN = "part-*.tfrecord*"
#: Output compression (the ``compression`` job flag) -> shard file suffix. GZIP shards are ordinary
#: TFRecord files compressed whole, as TFRecordWriter(options="GZIP") writes them.
COMPRESSIONS = {"none": "", "gzip": ".gz"}


def shard_name(index: int, compression: str = "none") -> str:
    """``part-NNNNN.tfrecord`` (``.gz`` added for gzip) of shard ``index``; KeyError for an unknown compression."""
    return f"part-{index:05d}.tfrecord{COMPRESSIONS[compression]}"


def is_compressed(path: str) -> bool:
    """Whether the shard at ``path`` is GZIP-compressed (its name says so, see shard_name)."""
    return str(path).endswith(COMPRESSIONS["gzip"])


def compression_type(files: Iterable[str]) -> str:
    """``compression_type`` for tf.data.TFRecordDataset over ``files``: "GZIP" for *.gz shards, else "".

    Raises ValueError when ``files`` mix compressed and uncompressed shards."""
    kinds = {is_compressed(f) for f in files}
    if len(kinds) > 1:
        raise ValueError(f"shards mix compressed and uncompressed files: {sorted(map(str, files))}")
    return "GZIP" if kinds == {True} else ""


def shard_writer(raw: BinaryIO, compression: str = "none") -> BinaryIO:
    """The binary writer ``raw`` of a shard, gzip-compressing when ``compression`` is "gzip" (with no
    mtime or file name in the gzip header, so reruns write identical bytes). Closing it closes ``raw``."""
    if compression == "none":
        return raw
    import gzip

    class _Gzip(gzip.GzipFile):
        def close(self):
            try:
                super().close()
            finally:
                raw.close()

    return _Gzip(filename="", mode="wb", fileobj=raw, compresslevel=6, mtime=0)


def _varint(value):
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _packed_varints(matrix):
    """Each row of a non-negative int matrix as packed protobuf varints, built in bulk with numpy."""
    m = np.asarray(matrix)
    top = int(m.max()) if m.size else 0
    groups = 1
    while top >> (7 * groups):
        groups += 1
    v = m.astype(np.uint32 if top < 2 ** 32 else np.uint64, copy=False)  # narrow types: less memory traffic
    out = np.empty(v.shape + (groups,), np.uint8)
    keep = np.empty(v.shape + (groups,), bool)
    for g in range(groups):
        part = (v >> (7 * g)) & 0x7F if g else v & 0x7F
        rest = v >> (7 * (g + 1))
        out[..., g] = part | np.where(rest > 0, 0x80, 0).astype(part.dtype)
        keep[..., g] = (v >> (7 * g)) > 0 if g else True
    flat = out[keep].tobytes()
    ends = np.cumsum(keep.sum(axis=(1, 2))).tolist()
    return [flat[s:e] for s, e in zip([0] + ends[:-1], ends)]


def _len_field(tag, payload):
    return tag + _varint(len(payload)) + payload


def _int64_entry(key, packed):
    """One ``Features.feature`` map entry: key -> Feature{int64_list{packed values}}."""
    feature = _len_field(b"\x1a", _len_field(b"\x0a", packed))
    return _len_field(b"\x0a", _len_field(b"\x0a", key) + _len_field(b"\x12", feature))


class _Prefixes(dict):
    """Entry bytes before the packed values, by the packed length (a few distinct lengths per batch)."""

    def __init__(self, key):
        super().__init__()
        self.key = key

    def __missing__(self, length):
        whole = _int64_entry(self.key, b"\x00" * length)
        self[length] = whole[:len(whole) - length]
        return self[length]


def encode_examples(pixels: np.ndarray, labels: np.ndarray | None = None,
                    row_ids: np.ndarray | None = None) -> list[bytes]:
    """Serialized ``tf.train.Example`` of each row, in bulk from numpy arrays.

    ``pixels``: non-negative ints [n, H*W] (feature ``image``); ``labels``, ``row_ids``: non-negative
    ints [n] (features ``label``, ``row_id``; left out when None). Returns n serialized records.

    Byte for byte what ``SerializeToString(deterministic=True)`` gives (map entries sorted by key;
    tests/unit/test_schema_model.py proves it against the protobuf API and ``tf.io.parse_example``),
    so the same row always gives the same bytes. Per row only a few lookups and one join are left
    in Python: values are varint-encoded in bulk, entry headers are cached by length.
    """
    columns = [(_Prefixes(b"image"), _packed_varints(pixels))]
    if labels is not None:
        columns.append((_Prefixes(b"label"), _packed_varints(np.asarray(labels).reshape(-1, 1))))
    if row_ids is not None:
        columns.append((_Prefixes(b"row_id"), _packed_varints(np.asarray(row_ids).reshape(-1, 1))))
    out = []
    example_prefix = {}
    for values in zip(*(packed for _prefixes, packed in columns)):
        body = b"".join([prefixes[len(v)] + v for (prefixes, _packed), v in zip(columns, values)])
        n = len(body)
        head = example_prefix.get(n)
        if head is None:
            head = example_prefix[n] = b"\x0a" + _varint(n)
        out.append(head + body)
    return out


def _masked_crc(data):
    crc = google_crc32c.value(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord_frame(record: bytes) -> bytes:
    """One record in TFRecord framing: length, masked CRC32C of the length, data, masked CRC32C of the data."""
    length = struct.pack("<Q", len(record))
    return length + struct.pack("<I", _masked_crc(length)) + record + struct.pack("<I", _masked_crc(record))


def tfrecord_payloads(data: bytes, compressed: bool = False) -> Iterator[bytes]:
    """The records in the bytes of a TFRecord file, GZIP-compressed when ``compressed`` (framing not re-checked)."""
    if compressed:
        import gzip
        data = gzip.decompress(data)
    offset, end = 0, len(data)
    while offset < end:
        (length,) = struct.unpack_from("<Q", data, offset)
        start = offset + 12
        yield data[start:start + length]
        offset = start + length + 4


def feature_spec(num_pixels: int) -> dict:
    """``tf.io.parse_example`` spec of a record: ``image`` int64 [num_pixels], ``label`` and ``row_id``
    int64 [1] (-1 when absent)."""
    import tensorflow as tf
    return {
        "image": tf.io.FixedLenFeature([num_pixels], tf.int64),
        "label": tf.io.FixedLenFeature([1], tf.int64, default_value=[-1]),
        "row_id": tf.io.FixedLenFeature([1], tf.int64, default_value=[-1]),
    }


def parse_batch(serialized: tf.Tensor, image_shape: tuple[int, int]) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Parse a batch of serialized Examples into (image float32 [N,H,W,1], label int64 [N], row_id int64 [N]).

    ``label`` is -1 for unlabeled rows. Pixels stay raw: the model scales them (see model.py).
    """
    import tensorflow as tf
    h, w = image_shape
    parsed = tf.io.parse_example(serialized, feature_spec(h * w))
    image = tf.reshape(tf.cast(parsed["image"], tf.float32), [-1, h, w, 1])
    return image, tf.reshape(parsed["label"], [-1]), tf.reshape(parsed["row_id"], [-1])
