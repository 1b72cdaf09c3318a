"""Real Spark jobs on a 2-executor local cluster: conversion accounting, determinism, atomicity, clear errors."""
import glob
import gzip
import json
import os

import pytest
import tensorflow as tf
from sklearn.datasets import load_digits

from conftest import run_job
from tfospipe import csvparse, paths, schema

pytestmark = pytest.mark.spark
VERSION = "2026-11-01"

# (raw line, quarantine kind) planted into a.csv after the good rows
BAD_LINES = [
    (b"3,0,0", "column_count"),
    (b"3," + b",".join([b"0"] * 63) + b",abc", "non_numeric"),
    (b"," + b",".join([b"0"] * 64), "label_missing"),
    (b"12," + b",".join([b"0"] * 64), "label_range"),
    (b"3," + b",".join([b"0"] * 63) + b",300", "pixel_range"),
    (b"3," + b",".join([b"0"] * 63) + b",nan", "nan_inf"),
    (b'3,"0,' + b",".join([b"0"] * 63), "quote"),
    (b"3,\xff\xfe," + b",".join([b"0"] * 63), "invalid_utf8"),
    (b"label," + b",".join(b"pixel%d" % i for i in range(64)), "header"),
]


def digits_lines(start, stop):
    d = load_digits()
    return [f"{t}," + ",".join(str(int(v)) for v in row) for t, row in zip(d.target[start:stop], d.data[start:stop])]


@pytest.fixture(scope="module")
def raw_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    raw = root / "raw" / VERSION
    (raw / "score").mkdir(parents=True)
    header = "label," + ",".join(f"pixel{i}" for i in range(64))
    a = [header] + digits_lines(0, 300)
    with open(raw / "a.csv", "wb") as f:
        f.write(("\n".join(a) + "\n").encode())
        for line, _kind in BAD_LINES[:1] + [(b"", "blank")] + BAD_LINES[1:]:  # a blank line: not a row
            f.write(line + b"\n")
    with gzip.open(raw / "b.csv.gz", "wb") as f:  # no header, gzip
        f.write(("\n".join(digits_lines(300, 500)) + "\n").encode())
    with open(raw / "score" / "s.csv", "w") as f:  # unlabeled rows to score
        f.write("\n".join(line.split(",", 1)[1] for line in digits_lines(500, 550)) + "\n")
    return root


def read_records(path):
    return [bytes(r.numpy()) for r in tf.data.TFRecordDataset(path)]


def convert(root, build_dir, **extra):
    return run_job("convert", dict({"data_root": str(root), "version": VERSION}, **extra), build_dir)


@pytest.fixture(scope="module")
def converted(raw_root, build_dir):
    run = convert(raw_root, build_dir)
    assert run.returncode == 0, run.explain(4000)
    out = raw_root / "tfrecords" / VERSION
    return run.result(), json.load(open(out / "_manifest.json")), out


def test_conversion_accounts_for_every_row(converted, raw_root):
    result, manifest, out = converted
    assert manifest["rows_read"] == 300 + len(BAD_LINES) + 200 + 50
    assert manifest["rows_read"] == manifest["rows_written"] + manifest["rows_quarantined"]
    assert manifest["rows_quarantined"] == len(BAD_LINES)
    assert manifest["blank_lines"] == 1 and manifest["header_lines"] == 1
    assert manifest["quarantined_by_kind"] == {kind: 1 for _line, kind in BAD_LINES}
    assert manifest["image_shape"] == [8, 8] and manifest["pixel_max_observed"] == 16
    assert manifest["splits"]["score"] == 50
    assert manifest["splits"]["train"] + manifest["splits"]["eval"] == 500
    assert 0.1 < manifest["splits"]["eval"] / 500 < 0.3
    for split, shards in manifest["shards"].items():
        assert len(shards) == 4
        for shard in shards:
            assert len(read_records(str(out / split / shard["file"]))) == shard["records"]
        assert sum(s["records"] for s in shards) == manifest["splits"][split]
    assert os.path.exists(out / "_SUCCESS")
    assert {i["file"] for i in manifest["inputs"]} == {"a.csv", "b.csv.gz", "score/s.csv"}


def test_statistics_are_committed_with_the_shards_and_agree_with_the_manifest(converted):
    _result, manifest, out = converted
    stats = json.load(open(out / paths.STATS_FILE))  # committed in the same rename as the shards
    assert stats["format"] == 1 and stats["image_shape"] == [8, 8] and stats["value_max"] == manifest["pixel_max"] == 255
    assert {s: v["rows"] for s, v in stats["splits"].items()} == manifest["splits"]
    labels = {k: stats["splits"]["train"]["label_counts"][k] + stats["splits"]["eval"]["label_counts"][k]
              for k in stats["splits"]["train"]["label_counts"]}
    assert {k: v for k, v in labels.items() if v} == manifest["label_counts"]
    assert stats["splits"]["score"]["label_counts"] == {}
    for split, s in stats["splits"].items():
        assert [sum(h) for h in s["features"]["histogram"]] == [s["rows"]] * 64, split
        assert max(s["features"]["max"]) <= 16 and len(s["features"]["mean"]) == 64
    summary = manifest["statistics"]
    assert summary["state"] == "on" and summary["file"] == paths.STATS_FILE
    assert summary["splits"] == {s: {k: v[k] for k in ("rows", "blank_rows", "duplicate_rows")}
                                 for s, v in stats["splits"].items()}
    assert summary["train_eval_overlap"] == stats["train_eval_overlap"] == 0  # identical rows share a split


def test_quarantine_keeps_file_line_reason_and_raw_text(converted, raw_root):
    rows = [json.loads(line) for p in glob.glob(str(raw_root / "quarantine" / VERSION / "part-*.jsonl"))
            for line in open(p)]
    assert len(rows) == len(BAD_LINES)
    by_kind = {r["kind"]: r for r in rows}
    first_bad_line = 1 + 300 + 1  # header + good rows, 1-based
    assert by_kind["column_count"] == {"file": "a.csv", "line": first_bad_line, "kind": "column_count",
                                       "reason": "wrong column count: expected 65, got 3", "raw": "3,0,0"}
    assert by_kind["header"]["line"] == first_bad_line + len(BAD_LINES)  # after the blank line
    assert all(r["file"] == "a.csv" and r["reason"] for r in rows)


def test_records_round_trip_to_the_csv_values(converted, raw_root):
    _result, _manifest, out = converted
    source = {}
    for i, line in enumerate(digits_lines(0, 300), start=2):
        source[csvparse.row_id("a.csv", i)] = line
    for i, line in enumerate(digits_lines(300, 500), start=1):
        source[csvparse.row_id("b.csv.gz", i)] = line
    records = [r for split in ("train", "eval") for p in sorted(glob.glob(str(out / split / "*.tfrecord")))
               for r in read_records(p)]
    image, label, row_id = schema.parse_batch(tf.constant(records), (8, 8))
    assert len(records) == 500
    for img, lab, rid in zip(image.numpy(), label.numpy(), row_id.numpy()):
        expected = source.pop(int(rid))
        assert expected == f"{lab}," + ",".join(str(int(v)) for v in img.reshape(-1))
    assert source == {}


def test_rerun_is_deterministic_and_replaces_cleanly(converted, raw_root, build_dir, tmp_path):
    _result, manifest, out = converted
    before = {p: open(p, "rb").read() for p in glob.glob(str(out / "*" / "*.tfrecord"))}
    assert os.path.exists(out / paths.STATS_FILE)
    run = convert(raw_root, build_dir, statistics="off")  # the same shards without the statistics
    assert run.returncode == 0, run.explain(4000)
    after = {p: open(p, "rb").read() for p in glob.glob(str(out / "*" / "*.tfrecord"))}
    assert before == after
    assert not os.path.exists(out / paths.STATS_FILE)
    assert json.load(open(out / "_manifest.json"))["statistics"] == {"state": "off"}
    assert sorted(os.listdir(out.parent)) == [f".{VERSION}.attempts", VERSION]  # attempts hidden beside it


def test_too_many_bad_rows_fails_clearly_and_keeps_previous_output(converted, raw_root, build_dir):
    _result, _manifest, out = converted
    before = {p: open(p, "rb").read() for p in glob.glob(str(out / "*" / "*"))}
    run = convert(raw_root, build_dir, max_bad_fraction=0.001)
    assert run.returncode == 2
    err = run.error()
    assert f"{len(BAD_LINES)} of {300 + len(BAD_LINES) + 200 + 50} rows" in err and "max-bad-fraction" in err and "quarantine" in err
    assert "Traceback" not in err
    assert {p: open(p, "rb").read() for p in glob.glob(str(out / "*" / "*"))} == before


def test_missing_input_and_missing_executors_fail_fast_with_a_message(converted, raw_root, build_dir):
    run = convert(raw_root, build_dir, version="1999-01-01")
    assert run.returncode == 2
    assert "no input for dataset version 1999-01-01" in run.error()
    assert str(raw_root / "raw" / "1999-01-01") in run.error()
    assert "Running Spark version" not in run.output  # refused by convert.prepare: no Spark application

    # data_checks off: the rerun test above converted this version without statistics; this is about executors
    run = run_job("train", {"data_root": str(raw_root), "version": VERSION, "run_id": "preflight",
                            "cluster_size": 3, "executor_wait": 5, "batch_size": 8, "data_checks": "off"}, build_dir,
                  cluster_size=3)
    assert run.returncode == 2
    assert "training needs cluster_size=3 executors" in run.error() and "got 2" in run.error()


def test_mnist_layout_28x28_label_last_gzip_output_converts_and_trains(tmp_path, build_dir):
    """MNIST CSV (28x28, 0-255, header '1x1,...,label', label in the last column), GZIP TFRecord output:
    the shape flows from the data to the exported model, and training reads the compressed shards."""
    import numpy as np
    from tfospipe import model

    d = load_digits()
    images = np.pad(np.kron(d.images[:400], np.ones((3, 3))), ((0, 0), (2, 2), (2, 2)))  # 8x8 -> 24x24 -> 28x28
    images = np.clip(images * 16, 0, 255).astype(int).reshape(400, 784)
    raw = tmp_path / "raw" / "mnist-v1"
    raw.mkdir(parents=True)
    with open(raw / "mnist_train.csv", "w") as f:
        f.write(",".join(f"{r}x{c}" for r in range(1, 29) for c in range(1, 29)) + ",label\n")
        for label, px in zip(d.target[:400], images):
            f.write(",".join(map(str, px)) + f",{label}\n")
    run = run_job("convert", {"data_root": str(tmp_path), "version": "mnist-v1", "label_column": -1,
                              "compression": "gzip"}, build_dir)
    assert run.returncode == 0, run.explain(4000)
    out = tmp_path / "tfrecords" / "mnist-v1"
    manifest = json.load(open(out / "_manifest.json"))
    assert manifest["image_shape"] == [28, 28] and manifest["pixel_max_observed"] == 255
    assert manifest["rows_written"] == 400 and manifest["compression"] == "gzip"
    shards = sorted(glob.glob(str(out / "*" / "part-*")))
    assert shards and all(p.endswith(".tfrecord.gz") and open(p, "rb").read(2) == b"\x1f\x8b" for p in shards)
    records = [r.numpy() for r in tf.data.TFRecordDataset(shards, compression_type="GZIP")]
    image, label, _ids = schema.parse_batch(tf.constant(records), (28, 28))
    expected = {tuple(px): lab for lab, px in zip(d.target[:400], images)}
    assert all(expected[tuple(img.reshape(-1).astype(int))] == lab for img, lab in zip(image.numpy(), label.numpy()))

    run = run_job("train", {"data_root": str(tmp_path), "version": "mnist-v1", "run_id": "r1", "epochs": 1,
                            "batch_size": 16}, build_dir)
    assert run.returncode == 0, run.explain(6000)
    assert run.result()["steps_run"] == manifest["splits"]["train"] // 32
    predict = model.load_serving(str(tmp_path / "models" / "mnist-v1" / "r1" / "model"), (28, 28))
    probs, classes = predict(images[:5].reshape(5, 28, 28, 1).astype("float32"))
    assert probs.shape == (5, 10) and classes.shape == (5,)
