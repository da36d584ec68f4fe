"""`run_layer_test`: the checks every layer in `layers/` must pass (after keras-hub's
`TestCase.run_layer_test`).

It covers: `get_config` keys equal the `__init__` parameters; `from_config` and a
`.keras` save/load give identical outputs; a `jit_compile=True` call equals the eager
call; the layer runs under `mixed_float16`; a `fit` step runs; and the layer trains
inside `tf.distribute.MirroredStrategy` over the two logical CPUs of conftest.py.
"""
import inspect

import keras
import numpy as np
import tensorflow as tf


def _as_numpy(x):
    return keras.tree.map_structure(lambda t: keras.ops.convert_to_numpy(t), x)


def _assert_close(a, b, atol=1e-5):
    for x, y in zip(keras.tree.flatten(_as_numpy(a)), keras.tree.flatten(_as_numpy(b))):
        np.testing.assert_allclose(x, y, atol=atol, rtol=atol)


def _first(x):
    return keras.tree.flatten(x)[0]


def run_layer_test(
    cls,
    init_kwargs,
    inputs,
    call_kwargs=None,
    expected_output_shape=None,
    tmp_path=None,
    run_mixed_precision=True,
    run_jit=True,
    run_distributed=True,
    atol=1e-5,
):
    """Runs the standard checks on `cls(**init_kwargs)(inputs, **call_kwargs)`.

    Args:
        cls: the layer class.
        init_kwargs: dict of constructor arguments.
        inputs: a tensor (or list of tensors passed positionally).
        call_kwargs: extra keyword arguments for `call` (masks as tensors).
        expected_output_shape: shape of the (first) output, or None.
        tmp_path: a folder for the `.keras` round trip; skipped when None.
    """
    call_kwargs = call_kwargs or {}
    positional = inputs if isinstance(inputs, (list, tuple)) else [inputs]

    # get_config returns exactly the __init__ arguments.
    layer = cls(**init_kwargs)
    out = layer(*positional, **call_kwargs)
    if expected_output_shape is not None:
        assert tuple(_first(out).shape) == tuple(expected_output_shape)
    config = layer.get_config()
    params = set(inspect.signature(cls.__init__).parameters) - {"self", "kwargs"}
    base = set(keras.layers.Layer(name="x").get_config())
    assert params <= set(config), f"get_config misses {params - set(config)}"
    extra = set(config) - params - base
    assert not extra, f"get_config has keys that are not __init__ args: {extra}"

    # from_config with copied weights gives identical outputs.
    clone = cls.from_config(config)
    clone(*positional, **call_kwargs)
    clone.set_weights(layer.get_weights())
    _assert_close(out, clone(*positional, **call_kwargs), atol)

    # Serialization through the registry.
    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(revived) is cls

    # .keras round trip of a model that holds the layer.
    if tmp_path is not None:
        holder = _Holder(layer, call_kwargs)
        expected = holder(positional)
        path = str(tmp_path / f"{cls.__name__}.keras")
        holder.save(path)
        loaded = keras.saving.load_model(path, custom_objects={"_Holder": _Holder})
        # The call kwargs (mask tensors, start indices) cannot travel in a config,
        # and `_Holder.from_config` drops them: hand them back, else the loaded
        # layer runs unmasked and the comparison is meaningless.
        loaded.call_kwargs = call_kwargs
        _assert_close(expected, loaded(positional), atol)

    # jit_compile=True equals eager.
    if run_jit:
        jitted = tf.function(lambda *a: layer(*a, **call_kwargs), jit_compile=True)
        _assert_close(out, jitted(*positional), 1e-4)

    # A gradient step reaches every trainable weight.
    with tf.GradientTape() as tape:
        loss = sum(
            tf.reduce_sum(tf.cast(t, "float32"))
            for t in keras.tree.flatten(layer(*positional, **call_kwargs))
            if t.dtype.is_floating
        )
    grads = tape.gradient(loss, layer.trainable_variables)
    assert all(g is not None for g in grads), "a trainable weight gets no gradient"

    if run_mixed_precision:
        mixed = cls(**init_kwargs, dtype="mixed_float16")
        mixed_out = mixed(*positional, **call_kwargs)
        first = _first(mixed_out)
        if first.dtype.is_floating:
            assert first.dtype == tf.float16, f"expected float16 output, got {first.dtype}"
            assert np.all(np.isfinite(keras.ops.convert_to_numpy(first).astype("float32")))

    if run_distributed:
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        with strategy.scope():
            dist_layer = cls(**init_kwargs)
            dist_layer(*positional, **call_kwargs)
        dist_layer.set_weights(layer.get_weights())

        @tf.function
        def replica_fn():
            return dist_layer(*positional, **call_kwargs)

        per_replica = strategy.run(replica_fn)
        for local in strategy.experimental_local_results(per_replica):
            _assert_close(out, local, atol)
    return layer, out


@keras.saving.register_keras_serializable(package="tests")
class _Holder(keras.Model):
    """A model that owns one layer, so `.keras` saving covers the layer's weights."""

    def __init__(self, layer, call_kwargs=None, **kwargs):
        super().__init__(**kwargs)
        self.inner = layer
        self.call_kwargs = call_kwargs or {}

    def call(self, inputs):
        return self.inner(*inputs, **self.call_kwargs)

    def get_config(self):
        return {"layer": keras.saving.serialize_keras_object(self.inner)}

    @classmethod
    def from_config(cls, config):
        return cls(keras.saving.deserialize_keras_object(config["layer"]))
