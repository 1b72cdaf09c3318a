import io

import numpy as np
import pytest
import tensorflow as tf

from tfospipe import fs, launch, model, schema, tfenv


def reference_example(pixels, label=None, row_id=None):
    """The protobuf API's encoding (TFoS's mnist_data_setup way), to check the bulk encoder against."""
    feature = {"image": tf.train.Feature(int64_list=tf.train.Int64List(value=pixels))}
    if label is not None:
        feature["label"] = tf.train.Feature(int64_list=tf.train.Int64List(value=[label]))
    if row_id is not None:
        feature["row_id"] = tf.train.Feature(int64_list=tf.train.Int64List(value=[row_id]))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(deterministic=True)


def test_bulk_encoder_is_byte_identical_to_the_protobuf_api():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (300, 784))
    pixels[0] = 0
    pixels[1, :6] = [127, 128, 255, 16383, 16384, 65535]
    labels = rng.integers(0, 10, 300)
    ids = rng.integers(0, 2 ** 63 - 1, 300, dtype=np.int64)
    assert schema.encode_examples(pixels, labels, ids) == [
        reference_example(p.tolist(), int(lab), int(i)) for p, lab, i in zip(pixels, labels, ids)]
    assert schema.encode_examples(pixels[:3], None, ids[:3]) == [
        reference_example(p.tolist(), None, int(i)) for p, i in zip(pixels[:3], ids[:3])]
    assert schema.encode_examples(np.zeros((0, 4), int)) == []


@pytest.mark.parametrize("top, dtype", [(127, np.uint16), (255, np.uint16), (255, np.int64), (16383, np.int32),
                                        (16384, np.int64)])
def test_each_varint_width_path_is_byte_identical(top, dtype):
    """Values below 2**7 take one byte, below 2**14 one or two (the uint16 paths the convert job's
    pixels take), larger ones the general path: each against the protobuf API."""
    rng = np.random.default_rng(top)
    pixels = rng.integers(0, top + 1, (200, 50)).astype(dtype)
    pixels[0] = 0
    pixels[1] = top
    pixels[2, :4] = [127, 128, top, 0]
    labels = rng.integers(0, 10, 200)
    ids = rng.integers(0, 2 ** 63 - 1, 200, dtype=np.int64)
    expected = [reference_example(p.tolist(), int(lab), int(i)) for p, lab, i in zip(pixels, labels, ids)]
    assert schema.encode_examples(pixels, labels, ids) == expected
    framed = schema.tfrecord_frames(expected)
    assert framed == b"".join(schema.tfrecord_frame(r) for r in expected)
    assert list(schema.tfrecords_in(io.BytesIO(framed), "framed")) == expected


def test_example_round_trip_through_parse_example():
    rows = [([1, 2, 3, 4], 7, 11), ([16, 0, 0, 5], 0, 12)]
    serialized = schema.encode_examples(np.array([r[0] for r in rows]), [r[1] for r in rows], [r[2] for r in rows])
    serialized += schema.encode_examples(np.array([[9, 9, 9, 9]]), None, [13])  # score rows carry no label
    image, label, row_id = schema.parse_batch(tf.constant(serialized), (2, 2))
    assert image.shape == (3, 2, 2, 1) and image.dtype == tf.float32
    assert image.numpy()[0, :, :, 0].tolist() == [[1, 2], [3, 4]]
    assert label.numpy().tolist() == [7, 0, -1]
    assert row_id.numpy().tolist() == [11, 12, 13]


def test_records_keep_the_tfos_mnist_feature_format():
    ex = tf.train.Example.FromString(schema.encode_examples(np.array([[1, 2, 3, 4]]), [5], [6])[0])
    assert list(ex.features.feature["label"].int64_list.value) == [5]
    assert list(ex.features.feature["image"].int64_list.value) == [1, 2, 3, 4]


@pytest.mark.parametrize("shape", [(8, 8), (28, 28)])
def test_model_is_the_seed_cnn_for_any_image_shape(shape):
    m = model.build_model(shape, 255)
    names = [layer.name for layer in m.layers]
    assert names[2:] == ["conv1", "pool1", "conv2", "pool2", "flatten", "dense", "dropout", "logits", "probabilities"]
    assert m.get_layer("conv1").kernel_size == (5, 5) and m.get_layer("conv1").filters == 32
    assert m.get_layer("conv2").filters == 64 and m.get_layer("dense").units == 1024
    assert m.get_layer("dropout").rate == 0.4
    assert m.output_shape == (None, 10)


def test_export_has_the_documented_signature_and_predicts(tmp_path):
    m = model.build_model((8, 8), 16)
    model.export(m, str(tmp_path / "m"), (8, 8))
    predict = model.load_serving(str(tmp_path / "m"), (8, 8))
    probs, classes = predict(np.random.RandomState(0).randint(0, 17, (5, 8, 8, 1)).astype("float32"))
    assert probs.shape == (5, 10) and classes.shape == (5,)
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert (classes == probs.argmax(axis=1)).all()


def test_signature_check_names_what_is_wrong(tmp_path):
    m = model.build_model((8, 8), 16)
    model.export(m, str(tmp_path / "m"), (8, 8))
    with pytest.raises(model.SignatureError, match=r"input 'image' is float32 \[None, 8, 8, 1\], expected float32 \[None, 28, 28, 1\]"):
        model.load_serving(str(tmp_path / "m"), (28, 28))

    class Other(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def f(self, x):
            return {"y": x}
    other = Other()
    tf.saved_model.save(other, str(tmp_path / "o"), signatures={"serving_default": other.f})
    with pytest.raises(model.SignatureError, match="signature inputs are"):
        model.load_serving(str(tmp_path / "o"), (8, 8))


def test_tfrecord_framing_is_byte_identical_to_tensorflows_writer(tmp_path):
    records = schema.encode_examples(np.arange(40).reshape(4, 10), [1, 2, 3, 4], [5, 6, 7, 8]) + [b"", b"x" * 300]
    with tf.io.TFRecordWriter(str(tmp_path / "tf.tfrecord")) as writer:
        for r in records:
            writer.write(r)
    ours = b"".join(schema.tfrecord_frame(r) for r in records)
    assert ours == (tmp_path / "tf.tfrecord").read_bytes()
    assert list(schema.tfrecords_in(io.BytesIO(ours), "ours")) == records


def test_shard_reader_streams_across_pieces_and_refuses_damage(tmp_path, monkeypatch):
    records = [b"x" * n for n in (0, 1, 11, 12, 13, 300, 5000)] * 3
    framed = schema.tfrecord_frames(records)
    monkeypatch.setattr(schema, "READ_BYTES", 7)  # records and headers cut at every place
    (tmp_path / "a.tfrecord").write_bytes(framed)
    assert list(schema.shard_records(str(tmp_path / "a.tfrecord"), fs.open_read)) == records
    with schema.shard_writer(open(tmp_path / "a.tfrecord.gz", "wb"), "gzip") as w:
        w.write(framed)
    assert list(schema.shard_records(str(tmp_path / "a.tfrecord.gz"), fs.open_read)) == records
    damaged = bytearray(framed)
    damaged[12 + 12 + 1 + 4 + 5] ^= 1  # a byte inside the third record's data
    (tmp_path / "bad.tfrecord").write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match=r"bad.tfrecord: corrupt TFRecord at byte 33 \(checksum"):
        list(schema.shard_records(str(tmp_path / "bad.tfrecord"), fs.open_read))
    (tmp_path / "cut.tfrecord").write_bytes(framed[:-3])
    with pytest.raises(ValueError, match="cut.tfrecord: truncated TFRecord"):
        list(schema.shard_records(str(tmp_path / "cut.tfrecord"), fs.open_read))


def test_gzip_shards_are_tfrecord_gzip_and_deterministic(tmp_path):
    records = [b"a" * 10, b"", b"xyz" * 100]
    paths = []
    for i in range(2):
        path = tmp_path / schema.shard_name(i, "gzip")
        with schema.shard_writer(open(path, "wb"), "gzip") as w:
            w.write(b"".join(schema.tfrecord_frame(r) for r in records))
        paths.append(path)
    assert paths[0].name == "part-00000.tfrecord.gz"
    assert paths[0].read_bytes() == paths[1].read_bytes()  # no mtime or name in the gzip header
    assert [r.numpy() for r in tf.data.TFRecordDataset(str(paths[0]), compression_type="GZIP")] == records
    assert list(schema.shard_records(str(paths[0]), fs.open_read)) == records  # read back as the jobs read shards
    assert schema.compression_type([str(p) for p in paths]) == "GZIP"
    assert schema.compression_type(["part-00000.tfrecord"]) == ""


FP16_ALL_REDUCE = r"""
import json
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from tfospipe import model
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    m = model.build_model((8, 8), 16, learning_rate=0.1, gradient_compression="fp16")
    v = tf.Variable([0.0, 0.0, 0.0])
def step():
    grads = tf.constant([1e-9, 0.1, 1000.0])  # below float16's range, inexact in float16, exact
    return [g for g, _ in m.optimizer.aggregate_gradients([(grads, v)])]
summed = tf.function(lambda: strategy.run(step))()[0]
print(json.dumps([type(m.optimizer).__name__, [r.numpy().tolist() for r in strategy.experimental_local_results(summed)]]))
"""


def test_fp16_gradient_compression_all_reduces_in_half_precision():
    """Two replicas sum their gradients rounded to float16 (in float32 the sum would be 2e-9, 0.2, 2000)."""
    import json
    import os
    import subprocess
    import sys
    env = dict(os.environ, **tfenv.KERAS_ENV, **tfenv.QUIET_ENV)
    run = subprocess.run([sys.executable, "-c", FP16_ALL_REDUCE], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    optimizer, replicas = json.loads(run.stdout.strip().splitlines()[-1])
    assert optimizer == "HalfPrecisionAllReduceAdam" and len(replicas) == 2
    for summed in replicas:                                   # every replica gets the same sum
        assert summed[0] == 0.0                               # 1e-9 underflows in float16
        assert summed[1] == float(np.float16(0.1)) * 2        # float16's rounding of 0.1, summed
        assert summed[1] != pytest.approx(0.2, rel=1e-6) and summed[2] == 2000.0
    assert type(model.build_model((8, 8), 16).optimizer).__name__ == "Adam"
    with pytest.raises(ValueError, match="gradient_compression"):
        model.build_model((8, 8), 16, gradient_compression="int8")


def test_the_package_runs_tensorflow_with_tf_keras():
    """tfenv's Keras setting is what the processes Spark starts get (launch.TF_ENV), and importing the
    model module in a process whose environment lacks it still gives tf-keras as tf.keras."""
    import os
    import subprocess
    import sys
    assert tfenv.KERAS_ENV.items() <= launch.TF_ENV.items() and tfenv.QUIET_ENV.items() <= launch.TF_ENV.items()
    env = {n: v for n, v in os.environ.items() if n not in tfenv.KERAS_ENV}
    code = "from tfospipe import model; print(model.tf.keras.Model.__module__)"
    run = subprocess.run([sys.executable, "-c", code], env=dict(env, **tfenv.QUIET_ENV), capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip().splitlines()[-1].startswith("tf_keras.")


def test_validate_checks_the_serving_contract_where_it_evaluates(tmp_path):
    """validate.evaluate_partition loads the models on the executor (so validate's driver never imports
    TensorFlow) and reports the ones that do not meet the contract, with the loader's message; the merge
    of partitions keeps every error and drops no accumulator of a model both partitions hold."""
    from tfospipe import metrics, validate
    model.export(model.build_model((8, 8), 16), str(tmp_path / "m"), (8, 8))
    models = {"candidate": str(tmp_path / "m"), "champion": str(tmp_path / "none")}
    ((accs, pairs, pythons, errors),) = validate.evaluate_partition(models, (8, 8))(iter([]))
    assert set(accs) == {"candidate"} and set(errors) == {"champion"} and errors["champion"], errors
    assert int(accs["candidate"]["confusion"].sum()) == 0 and int(pairs["records"].sum()) == 0 and pythons
    ((_a, _p, _py, wrong),) = validate.evaluate_partition({"candidate": str(tmp_path / "m")}, (28, 28))(iter([]))
    assert "expected float32 [None, 28, 28, 1]" in wrong["candidate"], wrong
    one = ({"candidate": metrics.empty(), "champion": metrics.empty()}, metrics.empty_pairs(), {"a"}, {})
    merged = validate._merge_partitions(one, (accs, pairs, {"b"}, errors))
    assert set(merged[0]) == {"candidate", "champion"} and merged[2] == {"a", "b"} and merged[3] == errors
