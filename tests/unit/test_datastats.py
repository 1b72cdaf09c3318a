"""datastats: the split statistics convert commits as ``_stats.json``, against numpy computed apart."""
import json
import random

import numpy as np
import pytest
from sklearn.datasets import load_digits

from tfospipe import csvparse, datastats, schema


def reference(labels, pixels, value_max):
    """One split's ``_stats.json`` entry computed the plain way: np.histogram over datastats.bin_edges,
    numpy's min, max, mean and std per feature (rounded as the file rounds them)."""
    px = np.minimum(np.asarray(pixels, np.int64), value_max)
    edges = datastats.bin_edges(value_max)
    rows = {tuple(r) for r in np.column_stack([labels if labels is not None else np.full(len(px), -1), px])}
    return {
        "rows": len(px),
        "label_counts": ({str(k): int((labels == k).sum()) for k in range(schema.NUM_CLASSES)}
                         if labels is not None else {}),
        "blank_rows": int((px == 0).all(axis=1).sum()),
        "duplicate_rows": len(px) - len(rows),
        "features": {"min": px.min(0).tolist(), "max": px.max(0).tolist(),
                     "mean": [round(float(x), 6) for x in px.mean(0)],
                     "std": [round(float(x), 6) for x in px.std(0)],
                     "zeros": (px == 0).sum(0).tolist(),
                     "histogram": [np.histogram(px[:, j], bins=edges)[0].tolist() for j in range(px.shape[1])]},
    }


def digits():
    d = load_digits()
    return d.target.astype(np.int64), d.data.astype(np.int64)


def random_28x28(n=3000, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 10, n), rng.integers(0, 256, (n, 784))


@pytest.mark.parametrize("data, value_max, shape", [(digits, 16, (8, 8)), (random_28x28, 255, (28, 28))])
@pytest.mark.parametrize("dtype", [np.uint16, np.int64])
@pytest.mark.parametrize("blocks", [1, 5])
def test_figures_equal_numpy_references(data, value_max, shape, dtype, blocks):
    labels, pixels = data()
    half = len(pixels) // 2
    splits = {"train": (labels[:half], pixels[:half].astype(dtype)), "eval": (labels[half:], pixels[half:].astype(dtype)),
              "score": (None, pixels[:100].astype(dtype))}
    stats = datastats.of_arrays(splits, shape, value_max, blocks=blocks)
    assert stats["format"] == 1 and stats["image_shape"] == list(shape) and stats["value_max"] == value_max
    assert stats["num_bins"] == datastats.NUM_BINS and stats["bin_edges"] == datastats.bin_edges(value_max)
    for split, (lab, px) in splits.items():
        assert stats["splits"][split] == reference(lab, px, value_max), split
    assert sum(stats["splits"]["train"]["features"]["histogram"][0]) == half


def test_bins_hold_whole_values_for_any_value_max():
    for value_max in (1, 15, 16, 100, 255, 1000, 4095, 65535):
        values = np.arange(value_max + 1)
        expected = values * datastats.NUM_BINS // (value_max + 1)
        got = np.searchsorted(datastats._thresholds(value_max, datastats.NUM_BINS), values, side="right")
        assert (got == expected).all(), value_max
        edges = datastats.bin_edges(value_max)
        assert (np.histogram(values, bins=edges)[0] == np.bincount(expected, minlength=datastats.NUM_BINS)).all()


@pytest.mark.parametrize("value_max", [100, 1000, 65535])
def test_value_max_not_a_power_of_two_multiple_and_wide_values(value_max):
    rng = np.random.default_rng(value_max)
    labels, pixels = rng.integers(0, 10, 500), rng.integers(0, value_max + 1, (500, 12))
    pixels[:3] = value_max  # at 65535: sums past 2^32 in a block (the uint64 path)
    for dtype in (np.uint16, np.int64):
        stats = datastats.of_arrays({"train": (labels, pixels.astype(dtype))}, (3, 4), value_max, blocks=3)
        assert stats["splits"]["train"] == reference(labels, pixels, value_max)


def test_values_above_value_max_count_as_value_max():
    """Convert quarantines such rows; fed anyway, they fall into the last bin and count as value_max."""
    labels, pixels = random_28x28(200)
    pixels[5, 7], pixels[9, 0] = 300, 1000
    for dtype in (np.uint16, np.int64):
        stats = datastats.of_arrays({"train": (labels, pixels.astype(dtype))}, (28, 28), 255)
        feats = stats["splits"]["train"]["features"]
        assert feats["max"][7] == 255 and feats["histogram"][7][-1] == (
            np.minimum(pixels[:, 7], 255) >= datastats._thresholds(255, datastats.NUM_BINS)[-1]).sum()
        assert stats["splits"]["train"] == reference(labels, pixels, 255)


def test_partials_merge_to_the_same_json_in_any_split_and_order():
    labels, pixels = digits()
    pixels = pixels.astype(np.uint16)
    whole = datastats.dumps(datastats.of_arrays({"train": (labels, pixels)}, (8, 8), 16))
    rng = random.Random(0)
    for _ in range(5):
        cuts = sorted(rng.sample(range(1, len(pixels)), rng.randint(1, 12)))
        parts = []
        for idx in np.split(np.arange(len(pixels)), cuts):
            acc = datastats.SplitStats(64, 16, True)
            for sub in np.array_split(idx, rng.randint(1, 4)):  # blocks of a task
                keys, image_keys = csvparse.content_keys(labels[sub], pixels[sub])
                acc.add(labels[sub], pixels[sub], keys, image_keys)
            parts.append(acc.partial())
        rng.shuffle(parts)
        parts.append(datastats.SplitStats(64, 16, True).partial())  # a task that wrote no row of the split
        merged = datastats.merge(parts)
        assert datastats.dumps(datastats.version_stats((8, 8), 16, {"train": merged})) == whole
    assert json.loads(whole)["splits"]["train"]["rows"] == len(pixels)


def test_merge_refuses_partials_that_disagree():
    with pytest.raises(ValueError, match="no partial"):
        datastats.merge([])
    with pytest.raises(ValueError, match="value_max"):
        datastats.merge([datastats.SplitStats(4, 16, True).partial(), datastats.SplitStats(4, 255, True).partial()])


def test_blank_duplicate_rows_and_train_eval_overlap_are_counted():
    z, a, b, c = [0] * 4, [1, 2, 3, 4], [5, 6, 7, 8], [9, 9, 9, 9]
    train = (np.array([1, 1, 2, 3, 3, 4]), np.array([z, z, a, b, b, c]))  # blank twice (a duplicate), b twice
    evaluate = (np.array([5, 2, 7, 7]), np.array([a, a, c, z]))  # a under label 5 and 2 (in train as 2), c, blank
    stats = datastats.of_arrays({"train": train, "eval": evaluate}, (2, 2), 16, blocks=2)
    tr, ev = stats["splits"]["train"], stats["splits"]["eval"]
    assert (tr["rows"], tr["blank_rows"], tr["duplicate_rows"]) == (6, 2, 2)
    assert (ev["rows"], ev["blank_rows"], ev["duplicate_rows"]) == (4, 1, 0)
    assert tr["label_counts"]["3"] == 2 and ev["label_counts"]["7"] == 2
    assert stats["train_eval_overlap"] == 4  # a twice, c, the blank image: the images, whatever the label
    assert tr["features"]["zeros"] == [2] * 4 and tr["features"]["min"] == [0] * 4
    assert stats == json.loads(datastats.dumps(stats))


def test_an_empty_split_has_null_figures():
    stats = datastats.of_arrays({"eval": (np.zeros(0, np.int64), np.zeros((0, 4), np.uint16))}, (2, 2), 255)
    ev = stats["splits"]["eval"]
    assert ev["rows"] == 0 and ev["features"]["min"] == [None] * 4 and ev["features"]["histogram"] == [[0] * datastats.NUM_BINS] * 4


def test_convert_ranges_give_the_statistics_of_their_rows(tmp_path):
    """convert_range on three byte ranges of a digits CSV, merged as the driver merges them: the same
    ``_stats.json`` as the rows fed whole, split by csvparse.splits_of (convert's split is unchanged)."""
    from tfospipe import convert, fs, inputs, jobargs, paths

    labels, pixels = digits()
    path = tmp_path / "d.csv"
    path.write_text("label," + ",".join(f"p{i}" for i in range(64)) + "\n" + "".join(
        f"{t}," + ",".join(map(str, row)) + "\n" for t, row in zip(labels, pixels)))
    params = jobargs.ConvertParams(data_root=str(tmp_path), version="v", pixel_max=16)
    dialect = csvparse.sniff(*inputs.read_head("d.csv", str(path))[:1], "d.csv")
    stage = tmp_path / "stage"
    for split in ("train", "eval", paths.LINEAGE_DIR):
        fs.makedirs(str(stage / split))
    spans = inputs.range_spans([inputs.range_lines(str(path), p, 3) for p in range(3)], path.stat().st_size)
    results = [convert.convert_range(convert.RangeTask(i, "d.csv", str(path), start, end, first, "labeled",
                                                       ("train", "eval"), dialect), str(stage), str(tmp_path / "q"),
                                     64, params) for i, (start, end, first) in enumerate(spans)]
    merged = {s: datastats.merge([r["stats"][s] for r in results]) for s in ("train", "eval")}
    got = datastats.version_stats((8, 8), 16, merged)
    split = csvparse.splits_of(labels, pixels, params.eval_fraction)
    want = datastats.of_arrays({s: (labels[split == s], pixels[split == s]) for s in ("train", "eval")}, (8, 8), 16)
    assert datastats.dumps(got) == datastats.dumps(want)
    assert {s: sum(r["counts"][s] for r in results) for s in ("train", "eval")} == \
        {s: got["splits"][s]["rows"] for s in ("train", "eval")}
