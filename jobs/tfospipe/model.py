"""The model definition and its serving signature: the contract between train, validate and infer.

Model: TensorFlowOnSpark's MNIST CNN — conv 5x5x32 -> max-pool 2x2 -> conv 5x5x64 -> max-pool 2x2 ->
dense 1024 -> dropout 0.4 -> dense 10 -> softmax, for any H x W input (28x28 MNIST, 8x8 digits).

Serving signature ``serving_default`` of every exported SavedModel:

    input   image           float32 [None, H, W, 1]   raw pixel values, 0..pixel_max (the model
                                                      divides by pixel_max itself)
    output  probabilities   float32 [None, 10]        softmax over the 10 classes
    output  class           int64   [None]            argmax of probabilities

tf-keras is used (``tfenv.prepare_tensorflow`` before TensorFlow is imported): Keras 3 cannot train
under MultiWorkerMirroredStrategy with this stack.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from . import tfenv

tfenv.prepare_tensorflow()

import tensorflow as tf  # noqa: E402

from . import schema  # noqa: E402
from .jobargs import GRADIENT_COMPRESSIONS  # noqa: E402

SIGNATURE = "serving_default"
INPUT = "image"
OUTPUT_PROBABILITIES = "probabilities"
OUTPUT_CLASS = "class"


class HalfPrecisionAllReduceAdam(tf.keras.optimizers.Adam):
    """Adam whose gradients are all-reduced as float16 (Horovod's fp16 compression): half the bytes
    and half the CPU of the ring all-reduce, which on CPU workers is paid in compute time. The sum is
    cast back to float32 before the update; gradients below ~6e-8 round to zero on the way."""

    def aggregate_gradients(self, grads_and_vars: list[tuple[tf.Tensor | None, tf.Variable]]
                            ) -> list[tuple[tf.Tensor | None, tf.Variable]]:
        """The gradients summed over the replicas as float16, cast back to each variable's dtype
        (None gradients stay None; outside a replica context Adam's own aggregation)."""
        pairs = [(g, v) for g, v in grads_and_vars if g is not None]
        context = tf.distribute.get_replica_context()
        if not pairs or context is None:
            return super().aggregate_gradients(grads_and_vars)
        summed = context.all_reduce(tf.distribute.ReduceOp.SUM, [tf.cast(g, tf.float16) for g, _ in pairs])
        summed = iter(tf.cast(s, v.dtype) for s, (_, v) in zip(summed, pairs))
        return [(next(summed), v) if g is not None else (g, v) for g, v in grads_and_vars]


def build_model(image_shape: tuple[int, int], pixel_max: int, learning_rate: float = 1e-3,
                steps_per_execution: int = 1, gradient_compression: str = "none") -> tf.keras.Model:
    """The seed's CNN, compiled for training with sparse categorical cross-entropy.

    ``image_shape``: ``(H, W)`` in pixels; ``pixel_max``: the dataset's pixel scale (the conversion
    manifest's ``pixel_max``), by which the model divides its input. ``steps_per_execution`` > 1 runs
    that many steps in one call of the compiled train function: fewer round trips from Python, batch
    callbacks every that many steps. ``gradient_compression`` "fp16" all-reduces the gradients as
    float16 (:class:`HalfPrecisionAllReduceAdam`). Raises ValueError for another value than those of
    jobargs.GRADIENT_COMPRESSIONS."""
    if gradient_compression not in GRADIENT_COMPRESSIONS:
        raise ValueError(f"gradient_compression {gradient_compression!r} is not one of {GRADIENT_COMPRESSIONS}")
    keras = tf.keras
    h, w = image_shape
    layers = keras.layers
    inputs = keras.Input(shape=(h, w, 1), name=INPUT, dtype="float32")
    x = layers.Rescaling(1.0 / float(pixel_max), name="scale")(inputs)
    x = layers.Conv2D(32, 5, padding="same", activation="relu", name="conv1")(x)
    x = layers.MaxPooling2D(2, 2, padding="same", name="pool1")(x)
    x = layers.Conv2D(64, 5, padding="same", activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D(2, 2, padding="same", name="pool2")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(1024, activation="relu", name="dense")(x)
    x = layers.Dropout(0.4, name="dropout")(x)
    logits = layers.Dense(schema.NUM_CLASSES, name="logits")(x)
    probabilities = layers.Softmax(name=OUTPUT_PROBABILITIES)(logits)
    model = keras.Model(inputs, probabilities, name="tfos_cnn")
    model.compile(
        optimizer=(HalfPrecisionAllReduceAdam if gradient_compression == "fp16" else keras.optimizers.Adam)(
            learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=["accuracy"],
        steps_per_execution=steps_per_execution,
    )
    return model


def serving_function(model: tf.keras.Model, image_shape: tuple[int, int]) -> tf.types.experimental.GenericFunction:
    """The ``serving_default`` function of ``model``: image float32 [None, H, W, 1] ->
    ``{"probabilities": float32 [None, 10], "class": int64 [None]}`` (the module docstring's signature)."""
    h, w = image_shape

    @tf.function(input_signature=[tf.TensorSpec([None, h, w, 1], tf.float32, name=INPUT)])
    def serve(image):
        probabilities = model(image, training=False)
        return {OUTPUT_PROBABILITIES: probabilities, OUTPUT_CLASS: tf.argmax(probabilities, axis=1)}

    return serve


def export(model: tf.keras.Model, path: str, image_shape: tuple[int, int]) -> None:
    """Write ``model`` as a SavedModel at ``path`` (a local path or a URI) with the serving signature above."""
    tf.saved_model.save(model, path, signatures={SIGNATURE: serving_function(model, image_shape)})


class SignatureError(ValueError):
    """A SavedModel whose ``serving_default`` signature differs from the contract of this module."""


def check_signature(loaded: object, image_shape: tuple[int, int]) -> tf.types.experimental.ConcreteFunction:
    """Raise SignatureError naming what differs from the documented signature; return the function.

    ``loaded``: what ``tf.saved_model.load`` returned; ``image_shape``: the ``(H, W)`` the input must take."""
    if SIGNATURE not in loaded.signatures:
        raise SignatureError(f"no '{SIGNATURE}' signature (found {sorted(loaded.signatures)})")
    fn = loaded.signatures[SIGNATURE]
    _args, kwargs = fn.structured_input_signature
    if set(kwargs) != {INPUT}:
        raise SignatureError(f"signature inputs are {sorted(kwargs)}, expected ['{INPUT}']")
    spec = kwargs[INPUT]
    want = [None, image_shape[0], image_shape[1], 1]
    if spec.dtype != tf.float32 or spec.shape.as_list() != want:
        raise SignatureError(f"input '{INPUT}' is {spec.dtype.name} {spec.shape.as_list()}, expected float32 {want}")
    outputs = fn.structured_outputs
    expected = {OUTPUT_PROBABILITIES: (tf.float32, [None, schema.NUM_CLASSES]), OUTPUT_CLASS: (tf.int64, [None])}
    if set(outputs) != set(expected):
        raise SignatureError(f"signature outputs are {sorted(outputs)}, expected {sorted(expected)}")
    for name, (dtype, shape) in expected.items():
        got = outputs[name]
        if got.dtype != dtype or got.shape.as_list() != shape:
            raise SignatureError(f"output '{name}' is {got.dtype.name} {got.shape.as_list()}, "
                                 f"expected {dtype.name} {shape}")
    return fn


def load_serving(path: str,
                 image_shape: tuple[int, int]) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Load a SavedModel, check its signature, return ``predict(images) -> (probabilities, classes)``.

    ``images``: float32 [n, H, W, 1] raw pixel values (anything ``tf.convert_to_tensor`` takes);
    ``probabilities``: float32 [n, 10]; ``classes``: int64 [n]. Raises SignatureError (check_signature),
    and OSError when ``path`` holds no SavedModel."""
    loaded = tf.saved_model.load(path)
    fn = check_signature(loaded, image_shape)

    def predict(images):
        out = fn(**{INPUT: tf.convert_to_tensor(images, tf.float32)})
        return out[OUTPUT_PROBABILITIES].numpy(), out[OUTPUT_CLASS].numpy()

    predict.loaded = loaded  # keep the trackable object alive as long as the function
    return predict
