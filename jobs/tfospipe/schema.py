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

import functools
import struct
from typing import TYPE_CHECKING, BinaryIO, Callable, Iterable, Iterator

import google_crc32c
import numpy as np

#: A masked CRC32C as TFRecord framing stores it (4 bytes, little-endian).
_CRC = struct.Struct("<I")

if TYPE_CHECKING:  # encoding and framing need no TensorFlow
    import tensorflow as tf

#: Classes of the label (digits 0-9): the model's output width.
NUM_CLASSES = 10

#: The columns of the predictions infer writes (Parquet), in order: (name, Spark SQL type, nullable,
#: meaning). infer.prediction_schema builds its Spark schema from them; the OpenLineage schema facet of
#: the predictions names them (lineage_facets.py).
PREDICTION_COLUMNS = (
    ("row_id", "bigint", False, "the source row's id (the lineage index maps it to file and line)"),
    ("predicted_class", "int", False, "argmax of the probabilities"),
    ("probability", "float", False, "the predicted class's probability"),
    ("probabilities", "array<float>", False, f"softmax over the {NUM_CLASSES} classes"),
    ("label", "int", True, "the row's label; null for an unlabeled (score) row"),
    ("model_version", "string", False, "the promoted model version that scored the row"),
    ("dataset_version", "string", False, "the dataset version of the row"),
)
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


def _row_slices(flat, ends):
    """``flat`` cut at the cumulative ``ends`` (int [n]): one bytes object per row."""
    ends = ends.tolist()
    return [flat[s:e] for s, e in zip([0] + ends[:-1], ends)]


def _packed_varints(matrix):
    """Each row of a non-negative int matrix [n, k] as packed protobuf varints, built in bulk with numpy.

    Values below 2**14 (pixels, labels) take one or two bytes and have their own path over uint16
    arrays; larger values (row ids) the general one, a byte per 7 bits."""
    m = np.asarray(matrix)
    n, k = m.shape
    top = int(m.max()) if m.size else 0
    if top < 1 << 7:
        flat = m.astype(np.uint8).tobytes()
        return [flat[i * k:(i + 1) * k] for i in range(n)]
    if top < 1 << 14:
        v = m.astype(np.uint16, copy=False)
        high = v >> 7
        big = high > 0
        # little-endian uint16 per value: low byte = low 7 bits + continuation bit, high byte = the rest
        word = (v + ((high + big) << 7)).astype("<u2", copy=False)
        keep = np.empty((n, k, 2), bool)
        keep[..., 0] = True
        keep[..., 1] = big
        flat = np.compress(keep.ravel(), word.view(np.uint8).ravel()).tobytes()
        return _row_slices(flat, np.cumsum(k + np.count_nonzero(big, axis=1)))
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
    return _row_slices(out[keep].tobytes(), np.cumsum(keep.sum(axis=(1, 2))))


def _len_field(tag, payload):
    return tag + _varint(len(payload)) + payload


@functools.lru_cache(maxsize=4096)
def _entry_prefix(key, length):
    """Bytes of one ``Features.feature`` map entry (key -> Feature{int64_list{packed values}}) that come
    before its ``length`` bytes of packed values: a few distinct lengths per column, so cached."""
    packed = b"\x00" * length
    whole = _len_field(b"\x0a", _len_field(b"\x0a", key) + _len_field(b"\x12", _len_field(b"\x1a", _len_field(
        b"\x0a", packed))))
    return whole[:len(whole) - length]


@functools.lru_cache(maxsize=4096)
def _example_prefix(length):
    """Bytes of an Example before its ``length`` bytes of Features (field 1, length-delimited)."""
    return b"\x0a" + _varint(length)


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
    columns = [(b"image", _packed_varints(pixels))]
    if labels is not None:
        columns.append((b"label", _packed_varints(np.asarray(labels).reshape(-1, 1))))
    if row_ids is not None:
        columns.append((b"row_id", _packed_varints(np.asarray(row_ids).reshape(-1, 1))))
    keys = [key for key, _packed in columns]
    out = []
    for values in zip(*(packed for _key, packed in columns)):
        body = b"".join([_entry_prefix(key, len(v)) + v for key, v in zip(keys, values)])
        out.append(_example_prefix(len(body)) + body)
    return out


def _masked_crc(data):
    crc = google_crc32c.value(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


@functools.lru_cache(maxsize=65536)
def _frame_header(length):
    """The 12 bytes before a record of ``length`` bytes: the length, then its masked CRC32C."""
    packed = struct.pack("<Q", length)
    return packed + struct.pack("<I", _masked_crc(packed))


def tfrecord_frame(record: bytes) -> bytes:
    """One record in TFRecord framing: length, masked CRC32C of the length, data, masked CRC32C of the data."""
    return _frame_header(len(record)) + record + _CRC.pack(_masked_crc(record))


def tfrecord_frames(records: Iterable[bytes]) -> bytes:
    """:func:`tfrecord_frame` of each record, joined: the bytes a TFRecord file holds for them."""
    parts = []
    for record in records:
        parts += (_frame_header(len(record)), record, _CRC.pack(_masked_crc(record)))
    return b"".join(parts)


#: Bytes read from a shard at once by :func:`tfrecords_in`.
READ_BYTES = 4 << 20


def tfrecords_in(f: BinaryIO, name: str) -> Iterator[bytes]:
    """The records of the TFRecord stream ``f`` (a binary reader, already decompressed), streamed in
    READ_BYTES pieces, so memory holds a piece and a record, not the file.

    Each record's length and data CRC32C are checked, as TensorFlow's reader checks them. Raises
    ValueError naming ``name`` and the byte offset when a checksum does not match or the stream ends
    inside a record (a truncated or damaged shard): rewrite the shard by rerunning convert.
    """
    pending, consumed = b"", 0
    while True:
        piece = f.read(READ_BYTES)
        data = pending + piece if pending else piece
        offset, end = 0, len(data)
        while end - offset >= 12:
            header = data[offset:offset + 12]
            (length,) = struct.unpack_from("<Q", header)
            stop = offset + 12 + length + 4
            if stop > end:
                break
            record = data[offset + 12:stop - 4]
            if header[8:] != _CRC.pack(_masked_crc(header[:8])) or data[stop - 4:stop] != _CRC.pack(_masked_crc(record)):
                raise ValueError(f"{name}: corrupt TFRecord at byte {consumed + offset:,} (checksum mismatch); "
                                 "rerun convert for this dataset version to rewrite its shards")
            yield record
            offset = stop
        consumed += offset
        pending = data[offset:]
        if not piece:
            if pending:
                raise ValueError(f"{name}: truncated TFRecord at byte {consumed:,} ({len(pending)} bytes of an "
                                 "incomplete record at the end); rerun convert for this dataset version")
            return


def shard_records(path: str, open_read: Callable[[str], BinaryIO]) -> Iterator[bytes]:
    """The serialized records of the TFRecord shard at ``path`` (GZIP when :func:`is_compressed`), opened
    with ``open_read`` (``fs.open_read``: any root), streamed with their checksums checked
    (:func:`tfrecords_in`: ValueError names a corrupt or truncated shard; OSError when it cannot be read)."""
    import gzip

    with open_read(path) as raw:
        if is_compressed(path):
            with gzip.GzipFile(fileobj=raw) as unzipped:
                yield from tfrecords_in(unzipped, path)
        else:
            yield from tfrecords_in(raw, path)


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
