"""Linear attention (Katharopoulos et al. 2020): kernelised attention in O(T) time."""
import keras
from keras import ops

from layers.masking import resolve_padding_mask
from layers.multi_head_attention import check_positive_int, head_projections

# Guards the normaliser of a query that sees no key (all keys padded): 0 / eps = 0.
EPSILON = 1e-6


def elu_feature_map(x):
    """phi(x) = elu(x) + 1, positive everywhere so the normaliser never vanishes."""
    return ops.elu(x) + 1.0


@keras.saving.register_keras_serializable(package="layers")
class LinearAttention(keras.layers.Layer):
    """Multi-head linear attention with the feature map phi(x) = elu(x) + 1.

    Per head, with phi applied to projected queries and keys:
    `out_t = phi(q_t) (sum_s phi(k_s)^T v_s) / (phi(q_t) . sum_s phi(k_s))`.
    The key-value summary `(K, V)` is computed once, so time and memory grow
    linearly in the sequence length instead of quadratically. With `causal=True`
    the sums run over `s <= t`: the paper's cumulative sums (its RNN view),
    computed chunk by chunk (`causal_linear_sums`), still linear in T.
    Projection weights match `MultiHeadAttention` (and so keras's).

    The computation runs in float32 (also under `mixed_float16`): the cumulative
    sums grow with T and would lose precision in float16.

    Args:
        num_heads: positive int H.
        key_dim: positive int K, size of each query/key head.
        value_dim: optional positive int V. Defaults to `key_dim`.
        causal: bool; query `t` sees keys `s <= t` (needs T == S). Defaults to False.
        chunk_size: positive int, positions per chunk of the causal computation
            (see `causal_linear_sums`); changes speed, not results. Defaults to 64.
        use_bias: bool, biases in the projections. Defaults to True.
        output_dim: optional int, last axis of the output. Defaults to the query's.
        kernel_initializer: Defaults to `"glorot_uniform"`.
        bias_initializer: Defaults to `"zeros"`.

    Call arguments:
        query: `(B, T, D)`.
        value: `(B, S, D)`.
        key: optional `(B, S, D)`; defaults to `value`.
        padding_mask: optional `(B, S)` mask of valid keys; defaults to the
            implicit Keras mask of `value`. Padded keys get phi(k) = 0, so they
            add nothing to either sum.
        training: unused, accepted for a uniform signature.

    Returns:
        `(B, T, D_out)`. A query that sees no valid key gets zero attention (its
        output is the output projection's bias). The output carries the implicit
        mask of `query`.

    Example:
    >>> y = LinearAttention(num_heads=2, key_dim=16, causal=True)(x, x)

    Reference: Katharopoulos et al. 2020, "Transformers are RNNs: Fast
    Autoregressive Transformers with Linear Attention", https://arxiv.org/abs/2006.16236
    """

    def __init__(
        self,
        num_heads,
        key_dim,
        value_dim=None,
        causal=False,
        chunk_size=64,
        use_bias=True,
        output_dim=None,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_positive_int("num_heads", num_heads)
        check_positive_int("key_dim", key_dim)
        check_positive_int("value_dim", value_dim, allow_none=True)
        check_positive_int("output_dim", output_dim, allow_none=True)
        check_positive_int("chunk_size", chunk_size)
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.value_dim = value_dim
        self.causal = causal
        self.chunk_size = chunk_size
        self.use_bias = use_bias
        self.output_dim = output_dim
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.supports_masking = True

    def build(self, query_shape, value_shape, key_shape=None):
        key_shape = value_shape if key_shape is None else key_shape
        (
            self.query_dense,
            self.key_dense,
            self.value_dense,
            self.output_dense,
        ) = head_projections(
            self,
            query_shape,
            value_shape,
            key_shape,
            value_dim=self.value_dim or self.key_dim,
            output_dim=self.output_dim or query_shape[-1],
        )

    def call(self, query, value, key=None, padding_mask=None, training=None):
        key = value if key is None else key
        if self.causal and None not in (query.shape[1], key.shape[1]) and (
            query.shape[1] != key.shape[1]
        ):
            raise ValueError(
                "causal=True needs as many queries as keys; received query length "
                f"{query.shape[1]}, key length {key.shape[1]}"
            )
        keys_valid = resolve_padding_mask(value, padding_mask, key.shape[1])  # (B, S)
        q = elu_feature_map(ops.cast(self.query_dense(query), "float32"))  # (B, T, H, K)
        k = elu_feature_map(ops.cast(self.key_dense(key), "float32"))  # (B, S, H, K)
        v = ops.cast(self.value_dense(value), "float32")  # (B, S, H, V)
        if keys_valid is not None:
            k = k * ops.cast(keys_valid, "float32")[:, :, None, None]
        if self.causal:
            numerator, normaliser = causal_linear_sums(q, k, v, self.chunk_size)
        else:
            kv = ops.einsum("bshk,bshv->bhkv", k, v)  # (B, H, K, V)
            numerator = ops.einsum("bthk,bhkv->bthv", q, kv)  # (B, T, H, V)
            normaliser = ops.einsum("bthk,bhk->bth", q, ops.sum(k, axis=1))  # (B, T, H)
        output = numerator / (normaliser[..., None] + EPSILON)  # (B, T, H, V)
        return self.output_dense(ops.cast(output, self.compute_dtype))  # (B, T, D_out)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "key_dim": self.key_dim,
                "value_dim": self.value_dim,
                "causal": self.causal,
                "chunk_size": self.chunk_size,
                "use_bias": self.use_bias,
                "output_dim": self.output_dim,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            }
        )
        return config


def causal_linear_sums(q, k, v, chunk_size):
    """`sum_{s<=t} (q_t . k_s) v_s` and `sum_{s<=t} q_t . k_s`, chunk by chunk.

    Inside a chunk of C positions the (C, C) similarities are formed explicitly and
    masked to `s <= t`; across chunks the running state `sum_s k_s^T v_s` (K, V) is
    carried as an exclusive prefix sum over chunk summaries. Time and memory are
    O(T (C + K V / C)): linear in T, and matrix products instead of a (T, K, V)
    prefix sum, which is several times faster on CPU.

    Args:
        q: `(B, T, H, K)` featurised queries; k: `(B, T, H, K)` featurised keys
            (zero at padded positions); v: `(B, T, H, V)`.
        chunk_size: int C; T is zero-padded up to a multiple of C.

    Returns:
        numerator `(B, T, H, V)`, normaliser `(B, T, H)`.
    """
    # Python ints where static (XLA needs them), tensors where T is unknown.
    batch, length, heads, key_dim = ops.shape(q)
    value_dim = v.shape[3]
    chunk = min(chunk_size, length) if isinstance(length, int) else chunk_size
    extra = (-length) % chunk
    if not isinstance(extra, int) or extra:  # zero keys add nothing; extra queries are dropped
        pad = [[0, 0], [0, extra], [0, 0], [0, 0]]
        q, k, v = ops.pad(q, pad), ops.pad(k, pad), ops.pad(v, pad)
    q = ops.reshape(q, (batch, -1, chunk, heads, key_dim))  # (B, N, C, H, K)
    k = ops.reshape(k, (batch, -1, chunk, heads, key_dim))  # (B, N, C, H, K)
    v = ops.reshape(v, (batch, -1, chunk, heads, value_dim))  # (B, N, C, H, V)

    # Within a chunk: explicit similarities, query c sees keys d <= c.
    lower = ops.cast(ops.tril(ops.ones((chunk, chunk))), "float32")
    within = ops.einsum("bnchk,bndhk->bnhcd", q, k) * lower  # (B, N, H, C, C)
    # Across chunks: what all earlier chunks summed to (exclusive prefix sum).
    state = _exclusive_cumsum(ops.einsum("bndhk,bndhv->bnhkv", k, v))  # (B, N, H, K, V)
    key_sum = _exclusive_cumsum(ops.sum(k, axis=2))  # (B, N, H, K)

    numerator = ops.einsum("bnhcd,bndhv->bnchv", within, v) + ops.einsum(
        "bnchk,bnhkv->bnchv", q, state
    )  # (B, N, C, H, V)
    normaliser = ops.einsum("bnhcd->bnch", within) + ops.einsum(
        "bnchk,bnhk->bnch", q, key_sum
    )  # (B, N, C, H)
    numerator = ops.reshape(numerator, (batch, -1, heads, value_dim))[:, :length]
    normaliser = ops.reshape(normaliser, (batch, -1, heads))[:, :length]
    return numerator, normaliser  # (B, T, H, V), (B, T, H)


def _exclusive_cumsum(x):
    # Shift by one chunk instead of subtracting, which would cancel catastrophically.
    total = ops.cumsum(x, axis=1)
    return ops.concatenate([ops.zeros_like(total[:, :1]), total[:, :-1]], axis=1)
