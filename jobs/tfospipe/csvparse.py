"""CSV rows (label, then H*W pixels) to checked values; bad rows get a reason instead of an exception.

Pure Python, no Spark and no TensorFlow, so it is unit-testable and cheap in executors.
"""

import gzip
import hashlib
import math
from collections import Counter

HASH_BUCKETS = 1_000_000


class RowError(ValueError):
    """A row that cannot be converted: ``kind`` counts it in the manifest, the message explains it."""

    def __init__(self, kind, message):
        super().__init__(message)
        self.kind = kind


class Spec:
    """What a valid row looks like for one dataset version."""

    def __init__(self, num_pixels, labeled=True, pixel_max=255, num_classes=10, label_col=0):
        self.num_pixels = num_pixels
        self.labeled = labeled
        self.pixel_max = pixel_max
        self.num_classes = num_classes
        self.label_col = label_col

    @property
    def num_columns(self):
        return self.num_pixels + (1 if self.labeled else 0)


def decompress(name, data):
    """Bytes of a CSV file, gunzipped when the name ends in .gz."""
    if name.endswith(".gz"):
        try:
            return gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise RowError("bad_gzip", f"cannot decompress gzip file: {e}") from e
    return data


def lines(data):
    """(line number starting at 1, raw bytes) for each line; a final newline ends the last line."""
    parts = data.split(b"\n")
    if parts and parts[-1] == b"":
        parts.pop()
    for i, raw in enumerate(parts, start=1):
        yield i, raw[:-1] if raw.endswith(b"\r") else raw


def _is_number(text):
    try:
        float(text)
        return True
    except ValueError:
        return False


def looks_like_header(fields):
    """A header names its columns (label,pixel0,... or 1x1,1x2,...): no field is a number."""
    named = [f.strip() for f in fields if f.strip()]
    return bool(named) and not any(_is_number(f) for f in named)


def _to_int(text, col):
    t = text.strip()
    if t == "":
        raise RowError("empty_field", f"empty field in column {col}")
    if '"' in t or "'" in t:
        raise RowError("quote", f"quote character in column {col}: {t[:20]!r}")
    try:
        return int(t)
    except ValueError:
        pass
    try:
        value = float(t)
    except ValueError:
        raise RowError("non_numeric", f"non-numeric field in column {col}: {t[:20]!r}") from None
    if math.isnan(value) or math.isinf(value):
        raise RowError("nan_inf", f"NaN or infinite value in column {col}: {t[:20]!r}")
    if value != int(value):
        raise RowError("non_integer", f"non-integer value in column {col}: {t[:20]!r}")
    return int(value)


def parse_row(raw, spec):
    """(label or None, pixel list) of one raw line, or RowError naming what is wrong."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RowError("invalid_utf8", f"invalid UTF-8 at byte {e.start}") from None
    if not text.strip():
        raise RowError("empty_line", "empty line")
    if any(ord(c) < 32 and c not in "\t" for c in text):
        raise RowError("garbage_bytes", "control characters (garbage bytes) in line")
    fields = text.split(",")
    if len(fields) == spec.num_columns and looks_like_header(fields):
        raise RowError("header", "header row in the middle of the file")
    if len(fields) != spec.num_columns:
        raise RowError("column_count", f"wrong column count: expected {spec.num_columns}, got {len(fields)}")
    label = None
    if spec.labeled:
        label_text = fields.pop(spec.label_col)
        if not label_text.strip():
            raise RowError("label_missing", "label missing")
        label = _to_int(label_text, spec.label_col)
        if not 0 <= label < spec.num_classes:
            raise RowError("label_range", f"label {label} outside 0..{spec.num_classes - 1}")
    pixels = []
    offset = 1 if spec.labeled else 0
    for i, f in enumerate(fields):
        v = _to_int(f, i + offset)
        if not 0 <= v <= spec.pixel_max:
            raise RowError("pixel_range", f"pixel value {v} in column {i + offset} outside 0..{spec.pixel_max}")
        pixels.append(v)
    return label, pixels


def _hash64(text):
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")


def row_id(file_name, line_no):
    """Stable 63-bit id of a source row: the same file name and line give the same id on every run."""
    return _hash64(f"{file_name}:{line_no}") & 0x7FFF_FFFF_FFFF_FFFF


def split_of(label, pixels, eval_fraction):
    """'eval' or 'train' from the row's content alone, so reruns and backfills split identically.

    Identical rows always land in the same split, so duplicates cannot leak from train into eval.
    """
    key = f"{label}|" + ",".join(map(str, pixels))
    return "eval" if _hash64(key) % HASH_BUCKETS < eval_fraction * HASH_BUCKETS else "train"


def infer_num_columns(sample_lines):
    """Most common field count among the sample's non-header data lines (None when there are none)."""
    counts = Counter()
    for raw in sample_lines:
        try:
            fields = raw.decode("utf-8").split(",")
        except UnicodeDecodeError:
            continue
        if len(fields) > 1 and not looks_like_header(fields):
            counts[len(fields)] += 1
    return counts.most_common(1)[0][0] if counts else None


def parse_file(name, data, spec):
    """Classify every line of one file.

    Yields ``("ok", line_no, label, pixels)`` or ``("bad", line_no, kind, reason, raw_text)``. A header
    is accepted on the first non-empty line only.
    """
    try:
        data = decompress(name, data)
    except RowError as e:
        yield ("bad", 0, e.kind, str(e), "")
        return
    first = True
    for line_no, raw in lines(data):
        if first and raw.strip():
            first = False
            if looks_like_header(raw.decode("utf-8", "replace").split(",")):
                continue
        try:
            label, pixels = parse_row(raw, spec)
        except RowError as e:
            yield ("bad", line_no, e.kind, str(e), raw.decode("utf-8", "replace")[:2000])
            continue
        yield ("ok", line_no, label, pixels)
