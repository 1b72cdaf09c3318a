import numpy as np
import pytest
import tensorflow as tf

from tfospipe import model, schema


def test_example_round_trip_through_parse_example():
    rows = [([1, 2, 3, 4], 7, 11), ([16, 0, 0, 5], 0, 12)]
    serialized = [schema.encode_example(p, label, rid) for p, label, rid in rows]
    serialized.append(schema.encode_example([9, 9, 9, 9], None, 13))  # score rows carry no label
    image, label, row_id = schema.parse_batch(tf.constant(serialized), (2, 2))
    assert image.shape == (3, 2, 2, 1) and image.dtype == tf.float32
    assert image.numpy()[0, :, :, 0].tolist() == [[1, 2], [3, 4]]
    assert label.numpy().tolist() == [7, 0, -1]
    assert row_id.numpy().tolist() == [11, 12, 13]


def test_records_keep_the_tfos_mnist_feature_format():
    ex = tf.train.Example.FromString(schema.encode_example([1, 2, 3, 4], 5, 6))
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
