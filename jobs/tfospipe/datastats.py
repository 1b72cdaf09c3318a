"""Statistics of a dataset version's splits, computed in the conversion pass and merged exactly.

Each convert task keeps one :class:`SplitStats` per split it writes and feeds it every block of good
rows it writes (:meth:`SplitStats.add`); the task returns :meth:`SplitStats.partial` (plain numpy
arrays and ints, picklable), the driver adds the partials of all tasks together (:func:`merge`) and
commits :func:`version_stats` as ``_stats.json`` beside the shards, in the same rename. Every
figure is a sum, a count, a minimum or a maximum of integers, so the merge is exact whatever the
number of tasks and the order of their rows. No second read of the CSV.

Per feature (pixel ``j``, row-major over the ``H x W`` image): ``count`` (rows), ``min``, ``max``,
``mean``, ``std`` (population), ``zeros`` (rows where it is 0), and ``histogram``: :data:`NUM_BINS`
counts over the declared range ``[0, value_max]`` (the convert job's ``pixel_max``): value ``v`` falls
in bin ``v * NUM_BINS // (value_max + 1)``, so the bins cover ``floor`` or ``ceil((value_max + 1) /
NUM_BINS)`` whole values each (:func:`bin_edges`) and two versions converted with the same
``pixel_max`` have the same bins.

Per split: ``rows``, ``label_counts`` (labeled splits; classes ``0..NUM_CLASSES-1``),
``blank_rows`` (rows whose pixels are all 0), ``duplicate_rows`` (rows equal, label and pixels, to
an earlier row of the split). Per version: ``train_eval_overlap``, the eval rows whose image (the
pixels alone, whatever the label) is also in the train split. Identical rows always land in the
same split (csvparse.splits_of), so the overlap counts the same image under different labels.

The layout of ``_stats.json`` (:data:`FORMAT` 1)::

    {"format": 1, "image_shape": [H, W], "value_max": 255, "num_bins": 10,
     "bin_edges": [0.0, 25.6, ..., 256.0],          # NUM_BINS + 1; bin b = [edge b, edge b+1)
     "train_eval_overlap": 0,
     "splits": {"train": {"rows": n, "label_counts": {"0": n0, ...}, "blank_rows": 0,
                          "duplicate_rows": 0,
                          "features": {"min": [P ints], "max": [P ints], "mean": [P floats],
                                       "std": [P floats], "zeros": [P ints],
                                       "histogram": [[NUM_BINS ints] x P]}},
                "eval": {...}, "score": {...}}}   # score: unlabeled, label_counts {}
"""

from __future__ import annotations

import json
import math

import numpy as np

from . import schema

#: Layout version of ``_stats.json``.
FORMAT = 1
#: Histogram bins per feature over the declared range ``[0, value_max]``: TensorFlow Data Validation's
#: default for numeric features (``StatsOptions.num_histogram_buckets`` = 10). Few enough that a split of a
#: few hundred rows fills them (~30 rows per bin when spread evenly), and each costs one comparison pass
#: over the block's pixels (:meth:`SplitStats._add_histogram`): 16 bins cost 1.65 us a 784-pixel row against
#: 0.73 for 10 (one core of an AMD EPYC), the largest part of the statistics' cost in the convert job.
NUM_BINS = 10


def bin_edges(value_max: int, num_bins: int = NUM_BINS) -> list[float]:
    """The ``num_bins + 1`` edges of the histogram bins over the integers ``0..value_max``: bin ``b``
    holds the values ``v`` with ``edge[b] <= v < edge[b + 1]``, i.e. ``v * num_bins // (value_max + 1) == b``."""
    return [(value_max + 1) * b / num_bins for b in range(num_bins + 1)]


def _thresholds(value_max: int, num_bins: int) -> list[int]:
    """The smallest value of each bin ``b`` from 1 on: ``ceil(b * (value_max + 1) / num_bins)``, the ``t`` with
    ``t * num_bins // (value_max + 1) >= b`` (a bin holds the values from its threshold to the next one's)."""
    width = value_max + 1
    return [-(-b * width // num_bins) for b in range(1, num_bins)]


#: Rows compared at once against every threshold (:meth:`SplitStats._add_histogram`): a bool [thresholds,
#: rows, P] block that stays in a core's cache (1 MB at 784 pixels and 10 bins), counted in uint8 (< 256 rows).
_CHUNK_ROWS = 128


class SplitStats:
    """The mergeable statistics of one split, fed block by block.

    ``num_features``: pixels per row (P = H*W); ``value_max``: the declared largest value (the bins
    cover ``0..value_max``; a larger value counts as ``value_max`` in every figure, which convert never
    writes as it quarantines such rows); ``labeled``: whether rows carry a label (train, eval; not score).
    Memory: a few int64 [P] arrays, the int64 [P, num_bins] histogram, 16 bytes of keys per row, and work
    arrays reused across blocks (the largest block as bytes and squares; NUM_BINS x 128 x P bools: 1 MB at 784).
    """

    def __init__(self, num_features: int, value_max: int, labeled: bool, num_bins: int = NUM_BINS):
        self.num_features, self.value_max, self.labeled, self.num_bins = num_features, value_max, labeled, num_bins
        self.rows = 0
        self.blank_rows = 0
        self.label_counts = np.zeros(schema.NUM_CLASSES, np.int64)
        p = num_features
        self.vmin = np.full(p, np.iinfo(np.int64).max, np.int64)
        self.vmax = np.full(p, -1, np.int64)
        self.vsum = np.zeros(p, np.int64)
        self.vsumsq = np.zeros(p, np.int64)
        self.zeros = np.zeros(p, np.int64)
        self.hist = np.zeros((p, num_bins), np.int64)
        self._keys: list[np.ndarray] = []
        self._image_keys: list[np.ndarray] = []
        # counts of values >= each threshold give the bins (differences) and the zeros (values >= 1)
        self._cuts = sorted(set(_thresholds(value_max, num_bins)) | {1})
        self._bin_cut = [self._cuts.index(t) for t in _thresholds(value_max, num_bins)]
        self._buffers: dict[str, np.ndarray] = {}  # work arrays kept across blocks: no fresh pages per block

    def _buffer(self, name: str, shape: tuple[int, ...], dtype: type) -> np.ndarray:
        """A work array of ``shape`` and ``dtype``, reused across blocks (grown along its first axis
        that differs when a block is larger)."""
        buf = self._buffers.get(name)
        if buf is None or any(a < b for a, b in zip(buf.shape, shape)):
            buf = self._buffers[name] = np.empty(shape, dtype)
        return buf[tuple(slice(0, k) for k in shape)]

    def add(self, labels: np.ndarray | None, pixels: np.ndarray, keys: np.ndarray, image_keys: np.ndarray) -> None:
        """Count one block of ``n`` written rows: ``labels`` int [n] (None or ignored when unlabeled),
        ``pixels`` non-negative int [n, P] (uint16 or int64, as csvparse yields them), ``keys`` uint64 [n]
        (csvparse.content_keys: label and pixels), ``image_keys`` uint64 [n] (the pixels alone).
        Every figure is an integer sum, count, minimum or maximum: exact. Raises ValueError when the
        pixels are not [n, P]."""
        n = len(pixels)
        if n == 0:
            return
        if pixels.ndim != 2 or pixels.shape[1] != self.num_features:
            raise ValueError(f"pixels of shape {pixels.shape}: expected [n, {self.num_features}]")
        self.rows += n
        if self.labeled and labels is not None:
            self.label_counts += np.bincount(np.asarray(labels, np.int64), minlength=len(self.label_counts))[
                :len(self.label_counts)]
        self._keys.append(np.asarray(keys, np.uint64))
        self._image_keys.append(np.asarray(image_keys, np.uint64))
        if pixels.dtype != np.uint16:
            pixels = pixels.astype(np.int64, copy=False)
        high = pixels.max(axis=0)
        if high.max() > self.value_max:  # not written by convert: such rows are quarantined
            pixels = np.minimum(pixels, self.value_max)
            high = pixels.max(axis=0)
        if self.value_max <= 255:  # one byte a value: half the memory traffic of every pass below
            small = self._buffer("uint8", pixels.shape, np.uint8)
            np.copyto(small, pixels, casting="unsafe")
            pixels = small
        np.maximum(self.vmax, high, out=self.vmax)
        np.minimum(self.vmin, pixels.min(axis=0), out=self.vmin)
        self._add_sums(pixels, int(high.max()))
        self.blank_rows += n - int(np.count_nonzero(pixels.any(axis=1)))
        self._add_histogram(pixels)

    def _add_sums(self, pixels: np.ndarray, high: int) -> None:
        """Per feature, the sum and the sum of squares of a block whose largest value is ``high``: uint8 and
        uint16 values squared in uint16 and uint32, summed in uint32 when no sum can reach 2^32, else in
        uint64; int64 input in int64 math. Exact (integer sums below 2^63)."""
        if pixels.dtype in (np.uint8, np.uint16):
            acc = np.uint32 if len(pixels) * high * high < 1 << 32 else np.uint64
            wide = np.uint16 if pixels.dtype == np.uint8 else np.uint32
            self.vsum += np.add.reduce(pixels, axis=0, dtype=acc).astype(np.int64, copy=False)
            squares = np.square(pixels, dtype=wide, out=self._buffer("squares", pixels.shape, wide))
            self.vsumsq += np.add.reduce(squares, axis=0, dtype=acc).astype(np.int64, copy=False)
        else:
            self.vsum += pixels.sum(axis=0)
            self.vsumsq += np.square(pixels).sum(axis=0)

    def _add_histogram(self, pixels: np.ndarray) -> None:
        """The bins and the zeros of a block (values ``<= value_max``): per feature, the rows whose value is
        at least each bin's threshold (and at least 1), compared for :data:`_CHUNK_ROWS` rows against every
        threshold at once and counted in uint8; bin ``b`` holds those >= its threshold but not the next's."""
        n, p = pixels.shape
        cuts = np.array(self._cuts, pixels.dtype)[:, None, None]
        at_least = np.zeros((len(self._cuts), p), np.int64)
        for start in range(0, n, _CHUNK_ROWS):
            rows = pixels[None, start:start + _CHUNK_ROWS]
            ge = np.greater_equal(rows, cuts, out=self._buffer("ge", (len(cuts), rows.shape[1], p), np.bool_))
            at_least += np.add.reduce(ge.view(np.uint8), axis=1, dtype=np.uint8)  # < 256 rows: exact
        cumulative = np.concatenate([np.full((1, p), n), at_least[self._bin_cut], np.zeros((1, p), np.int64)])
        self.hist += (cumulative[:-1] - cumulative[1:]).T
        self.zeros += n - at_least[self._cuts.index(1)]

    def partial(self) -> dict:
        """What a task returns: every figure so far as plain ints and numpy arrays (picklable), for :func:`merge`:
        ``rows``, ``blank_rows`` int; ``label_counts`` int64 [NUM_CLASSES]; ``min``, ``max``, ``sum``, ``sumsq``,
        ``zeros`` int64 [P]; ``histogram`` int64 [P, num_bins]; ``keys``, ``image_keys`` uint64 [rows]."""
        return {"num_features": self.num_features, "value_max": self.value_max, "labeled": self.labeled,
                "num_bins": self.num_bins, "rows": self.rows, "blank_rows": self.blank_rows,
                "label_counts": self.label_counts.copy(), "min": self.vmin.copy(), "max": self.vmax.copy(),
                "sum": self.vsum.copy(), "sumsq": self.vsumsq.copy(), "zeros": self.zeros.copy(),
                "histogram": self.hist.copy(),
                "keys": np.concatenate(self._keys) if self._keys else np.zeros(0, np.uint64),
                "image_keys": np.concatenate(self._image_keys) if self._image_keys else np.zeros(0, np.uint64)}


def merge(partials: list[dict]) -> dict:
    """The sum of several :meth:`SplitStats.partial` of one split (any order, same result). Raises
    ValueError when they disagree on features, range or bins, or when there is none."""
    if not partials:
        raise ValueError("no partial statistics to merge")
    first = partials[0]
    for p in partials[1:]:
        for key in ("num_features", "value_max", "labeled", "num_bins"):
            if p[key] != first[key]:
                raise ValueError(f"partial statistics disagree on {key}: {first[key]} vs {p[key]}")
    out = dict(first)
    for key in ("rows", "blank_rows", "label_counts", "sum", "sumsq", "zeros", "histogram"):
        out[key] = sum((p[key] for p in partials[1:]), first[key])
    out["min"] = np.minimum.reduce([p["min"] for p in partials])
    out["max"] = np.maximum.reduce([p["max"] for p in partials])
    out["keys"] = np.concatenate([p["keys"] for p in partials])
    out["image_keys"] = np.concatenate([p["image_keys"] for p in partials])
    return out


def split_summary(merged: dict) -> dict:
    """The JSON form of one split's merged statistics (see the module docstring); ``mean`` and ``std``
    (population) from the exact integer sums, rounded to 6 decimals; ``min``, ``max``, ``mean`` and
    ``std`` null for every feature of an empty split."""
    n = merged["rows"]
    features = {"min": [], "max": [], "mean": [], "std": [], "zeros": merged["zeros"].tolist(),
                "histogram": merged["histogram"].tolist()}
    if n:  # Python ints: n * sumsq - sum^2 is exact however many rows, then one rounding
        sums, sumsqs = merged["sum"].tolist(), merged["sumsq"].tolist()
        features.update(min=merged["min"].tolist(), max=merged["max"].tolist(),
                        mean=[round(s / n, 6) for s in sums],
                        std=[round(math.sqrt((n * q - s * s) / (n * n)), 6) for s, q in zip(sums, sumsqs)])
    else:
        p = merged["num_features"]
        features.update(min=[None] * p, max=[None] * p, mean=[None] * p, std=[None] * p)
    keys = merged["keys"]
    return {
        "rows": int(n),
        "label_counts": ({str(k): int(v) for k, v in enumerate(merged["label_counts"])} if merged["labeled"] else {}),
        "blank_rows": int(merged["blank_rows"]),
        "duplicate_rows": int(len(keys) - len(np.unique(keys))),
        "features": features,
    }


def version_stats(image_shape: tuple[int, int], value_max: int, merged: dict[str, dict]) -> dict:
    """The whole ``_stats.json`` of a version from the merged statistics of each split (``merged``:
    split name -> :func:`merge` result); ``train_eval_overlap`` when both train and eval are there."""
    overlap = 0
    if "train" in merged and "eval" in merged:
        overlap = int(np.isin(merged["eval"]["image_keys"], merged["train"]["image_keys"]).sum())
    num_bins = next(iter(merged.values()))["num_bins"] if merged else NUM_BINS
    return {"format": FORMAT, "image_shape": list(image_shape), "value_max": value_max, "num_bins": num_bins,
            "bin_edges": bin_edges(value_max, num_bins), "train_eval_overlap": overlap,
            "splits": {split: split_summary(m) for split, m in merged.items()}}


def of_arrays(splits: dict[str, tuple[np.ndarray | None, np.ndarray]], image_shape: tuple[int, int],
              value_max: int, blocks: int = 1) -> dict:
    """``_stats.json`` of in-memory splits (``split -> (labels int [n] or None, pixels int [n, P])``),
    fed in ``blocks`` blocks per split and merged as the convert tasks are: for tests, benchmarks and
    the checks' calibration on re-splits of a data set."""
    from . import csvparse
    merged = {}
    for split, (labels, pixels) in splits.items():
        parts = []
        for idx in np.array_split(np.arange(len(pixels)), max(1, blocks)):
            acc = SplitStats(pixels.shape[1], value_max, labels is not None)
            lab = labels[idx] if labels is not None else np.full(len(idx), -1)
            keys, image_keys = csvparse.content_keys(lab, pixels[idx])
            acc.add(lab if labels is not None else None, pixels[idx], keys, image_keys)
            parts.append(acc.partial())
        merged[split] = merge(parts)
    return version_stats(image_shape, value_max, merged)


def dumps(stats: dict) -> bytes:
    """``_stats.json`` bytes (UTF-8 JSON, one line per split is not promised: compact separators)."""
    return json.dumps(stats, separators=(",", ":")).encode("utf-8")
