"""`Dropout` and `dropout`: Keras dropout with the Philox generator named.

Keras draws a dropout mask with `tf.nn.experimental.stateless_dropout` and its default
`rng_alg="auto_select"`. On CPU that selects Philox in graph and XLA mode alike (the masks are
bit-identical to `rng_alg="philox"`, see tests/layers/test_dropout.py), but inside an
XLA-compiled function the auto-selected path is about 30x slower: a (64, 64, 128) mask and its
gradient took 114.6 ms against 3.8 ms with the algorithm named (graph mode: 2.3 ms either way;
`python -m benchmarks dropout_xla`, docs/benchmarks.md). That one op made every XLA training step with dropout
slower than graph mode on CPU (the sentiment LSTM at 0.3x). Naming the algorithm keeps the bits
and the speed. (On a TPU, where `auto_select` means ThreeFry, the masks differ from Keras'.)
"""
import keras
import tensorflow as tf

RNG_ALG = "philox"


def _seed(seed):
    """A `(2,)` int32 stateless seed from a `SeedGenerator` (advanced) or an int."""
    if isinstance(seed, keras.random.SeedGenerator):
        seed = seed.next()
    elif isinstance(seed, int):
        seed = tf.constant([seed, 0], "int64")
    else:
        raise ValueError(f"seed must be a keras.random.SeedGenerator or an int; "
                         f"received {seed!r}")
    if seed.dtype != tf.int32:  # as Keras' TF backend does (stateless ops take int32 under XLA)
        seed = tf.cast(tf.math.floormod(seed, tf.int32.max - 1), tf.int32)
    return seed


def dropout(inputs, rate, seed, noise_shape=None):
    """`keras.random.dropout` with the same masks on CPU, fast when XLA-compiled.

    Args:
        inputs: float tensor.
        rate: float in [0, 1), the fraction of elements set to zero.
        seed: a `keras.random.SeedGenerator` (advanced by one draw) or an int.
        noise_shape: None (the shape of `inputs`) or a list with None for the dimensions
            taken from `inputs` and 1 for the ones the mask is shared over.

    Returns:
        `inputs` with a fraction `rate` of its elements zeroed and the rest scaled by
        `1 / (1 - rate)`.
    """
    if rate == 0:
        return inputs
    shape = tf.shape(inputs)
    if noise_shape is not None:
        shape = [shape[i] if size is None else size for i, size in enumerate(noise_shape)]
    return tf.nn.experimental.stateless_dropout(inputs, rate=rate, seed=_seed(seed),
                                                noise_shape=shape, rng_alg=RNG_ALG)


@keras.saving.register_keras_serializable(package="layers")
class Dropout(keras.layers.Dropout):
    """`keras.layers.Dropout` (same arguments, config and masks on CPU), fast under XLA.

    Example:
    >>> y = Dropout(0.1)(keras.ops.ones((2, 3)), training=True)
    """

    def call(self, inputs, training=False):
        if training and self.rate > 0:
            return dropout(inputs, self.rate, self.seed_generator, noise_shape=self.noise_shape)
        return inputs
