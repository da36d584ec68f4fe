"""Multi-head attention with padding, causal and cache masks, and a key/value cache."""
import math

import keras
from keras import ops

from layers.dropout import Dropout
from layers.masking import merge_masks
from layers.scaled_dot_product_attention import scaled_dot_product_attention


def head_projections(layer, query_shape, value_shape, key_shape, value_dim, output_dim):
    """Builds the four `EinsumDense` projections shared by the multi-head layers.

    Weights are shaped like `keras.layers.MultiHeadAttention`'s, in the same order
    (query, key, value, output; kernel then bias), so `set_weights` copies across:
    query/key kernels `(D, H, K)`, value kernel `(D, H, V)`, biases `(H, K)`,
    output kernel `(H, V, D_out)` and bias `(D_out,)`.

    Args:
        layer: the owning layer; gives `num_heads`, `key_dim`, `use_bias`,
            initializers and the dtype policy.
        query_shape, value_shape, key_shape: input shapes `(B, T, D)`.
        value_dim: int V.
        output_dim: int D_out.

    Returns:
        `(query, key, value, output)` built sublayers named `"query"`, `"key"`,
        `"value"` and `"attention_output"`.
    """

    def dense(equation, output_shape, bias_axes, name, input_shape):
        projection = keras.layers.EinsumDense(
            equation,
            output_shape=output_shape,
            bias_axes=bias_axes if layer.use_bias else None,
            kernel_initializer=_clone(layer.kernel_initializer),
            bias_initializer=_clone(layer.bias_initializer),
            name=name,
            dtype=layer.dtype_policy,
        )
        # Position-wise, so an implicit input mask stays valid: let it pass rather
        # than warn that it is destroyed (masks are merged once, in `call`).
        projection.supports_masking = True
        projection.build(input_shape)
        return projection

    heads, key_dim = layer.num_heads, layer.key_dim
    query = dense("btd,dhk->bthk", (None, heads, key_dim), "hk", "query", query_shape)
    key = dense("bsd,dhk->bshk", (None, heads, key_dim), "hk", "key", key_shape)
    value = dense("bsd,dhv->bshv", (None, heads, value_dim), "hv", "value", value_shape)
    output = dense(
        "bthv,hvd->btd",
        (None, output_dim),
        "d",
        "attention_output",
        (query_shape[0], query_shape[1], heads, value_dim),
    )
    return query, key, value, output


def _clone(initializer):
    # A fresh instance per sublayer, so seeded initializers do not repeat weights.
    return initializer.__class__.from_config(initializer.get_config())


def check_positive_int(name, value, allow_none=False):
    if allow_none and value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        expected = "None or a positive int" if allow_none else "a positive int"
        raise ValueError(f"{name} must be {expected}; received {name}={value!r}")


@keras.saving.register_keras_serializable(package="layers")
class MultiHeadAttention(keras.layers.Layer):
    """Multi-head scaled dot-product attention with an optional key/value cache.

    Queries, keys and values are projected to `num_heads` heads, attended per head
    with `softmax(q k^T / sqrt(key_dim)) v`, concatenated and projected back. The
    weights match `keras.layers.MultiHeadAttention` (see `head_projections`).
    Self-attention (the same tensor passed as `query` and `value`, `key` None or
    that tensor too) computes q, k and v with one fused matmul; cross-attention
    computes k and v with one when `key` is None or is `value`.

    Args:
        num_heads: positive int H.
        key_dim: positive int K, size of each query/key head.
        value_dim: optional positive int V, size of each value head. Defaults to
            `key_dim`.
        dropout: float in [0, 1), dropout on the attention weights. Defaults to 0.
        use_bias: bool, biases in the projections. Defaults to True.
        output_dim: optional int, last axis of the output. Defaults to the query's.
        kernel_initializer: Defaults to `"glorot_uniform"`.
        bias_initializer: Defaults to `"zeros"`.
        seed: optional int seed for dropout.

    Call arguments:
        query: `(B, T, D)`.
        value: `(B, S, D)`.
        key: optional `(B, S, D)`; defaults to `value`.
        padding_mask: optional `(B, S)` mask of valid keys; defaults to the
            implicit Keras mask of `value`. With a cache, S is the cache length
            `S_max` and the implicit mask of `value` is not used.
        attention_mask: optional `(B, T, S)` mask (S = `S_max` with a cache).
        use_causal_mask: bool; query `t` sees keys `s <= t` (`s <= cache_index + t`
            with a cache).
        return_scores: bool; also return the attention weights `(B, H, T, S)`.
        cache: optional `(B, 2, S_max, H, K)` tensor of cached keys (`[:, 0]`) and
            values (`[:, 1]`), as keras-hub's `CachedMultiHeadAttention`; needs
            `value_dim == key_dim`.
        cache_index: optional scalar int (or int tensor): where the T new keys and
            values are written in the cache. Keys after `cache_index + T - 1` are
            masked. With a cache but no `cache_index` the cache is used as it is
            (precomputed keys and values, e.g. for cross-attention) and `key`/
            `value` are not projected.
        training: bool, for dropout.

    Returns:
        Without a cache: `output` `(B, T, D_out)`, or `(output, scores)` when
        `return_scores`.
        With a cache: `(output, cache)`, or `(output, scores, cache)` when
        `return_scores`; `cache` is the updated `(B, 2, S_max, H, K)` tensor.
        A query whose keys are all masked gets zero attention (its output is the
        output projection's bias). The output carries the implicit mask of `query`.

    Example:
    >>> mha = MultiHeadAttention(num_heads=2, key_dim=8)
    >>> y = mha(x, x, padding_mask=tokens != 0, use_causal_mask=True)
    >>> cache = ops.zeros((batch, 2, max_length, 2, 8))
    >>> y_t, cache = mha(x_t, x_t, use_causal_mask=True, cache=cache, cache_index=t)

    Reference: Vaswani et al. 2017, "Attention Is All You Need",
    https://arxiv.org/abs/1706.03762
    """

    def __init__(
        self,
        num_heads,
        key_dim,
        value_dim=None,
        dropout=0.0,
        use_bias=True,
        output_dim=None,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_positive_int("num_heads", num_heads)
        check_positive_int("key_dim", key_dim)
        check_positive_int("value_dim", value_dim, allow_none=True)
        check_positive_int("output_dim", output_dim, allow_none=True)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be a float in [0, 1); received dropout={dropout}")
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.value_dim = value_dim
        self.dropout = dropout
        self.use_bias = use_bias
        self.output_dim = output_dim
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.seed = seed
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
        self._dropout_layer = Dropout(self.dropout, seed=self.seed, dtype=self.dtype_policy)

    def call(
        self,
        query,
        value,
        key=None,
        padding_mask=None,
        attention_mask=None,
        use_causal_mask=False,
        return_scores=False,
        cache=None,
        cache_index=None,
        training=None,
    ):
        # Self-attention (one tensor as query, key and value) projects q, k and v
        # with one matmul; cross-attention projects k and v with one (`_project`).
        self_attention = value is query and (key is None or key is query)
        fused_kv = key is None or key is value
        key = value if key is None else key
        key_length = None
        if cache is None:
            if cache_index is not None:
                raise ValueError(
                    "cache_index must be None when cache is None; received "
                    f"cache_index={cache_index}"
                )
            if self_attention:
                q, k, v = self._project(query, "qkv")  # (B, H, T, K) each
            else:
                (q,) = self._project(query, "q")  # (B, H, T, K)
                k, v = self._project(value, "kv") if fused_kv else (
                    self._project(key, "k") + self._project(value, "v")
                )  # (B, H, S, K), (B, H, S, V)
        else:
            q, k, v, cache = self._read_cache(query, key, value, cache, cache_index, self_attention)
            key_length = cache.shape[2]
        mask = merge_masks(
            query,
            padding_mask=padding_mask,
            attention_mask=attention_mask,
            use_causal_mask=use_causal_mask,
            key_length=key_length,
            value=value,
            cache_index=cache_index,
        )  # (B, T, S)
        output, scores = scaled_dot_product_attention(
            q,
            k,
            v,
            mask,
            dropout_layer=self._dropout_layer,
            training=training,
            scale=1.0,  # 1 / sqrt(K) is folded into the query projection
        )  # (B, H, T, V), (B, H, T, S)
        output = self._output_projection(output)  # (B, T, D_out)
        results = (output, scores) if return_scores else (output,)
        if cache is not None:
            results += (cache,)
        return results[0] if len(results) == 1 else results

    def _project(self, inputs, parts, heads_first=True):
        """The projections named by `parts` ("q", "k", "v") of `inputs` (B, T, D),
        as one matmul with the kernels side by side.

        The query's kernel and bias are scaled by 1 / sqrt(K) here, on (D, H, K)
        rather than on every (B, H, T, K) query. The weights stay the three
        separate `EinsumDense` sublayers (`keras.layers.MultiHeadAttention`'s
        layout, so checkpoints and copied weights load unchanged); only the
        computation is fused.

        Returns:
            A list with one tensor per part: `(B, H, T, K)` (`(B, T, H, K)` when
            not `heads_first`); `(B, H, T, V)` for "v".
        """
        denses = [{"q": self.query_dense, "k": self.key_dense, "v": self.value_dense}[p]
                  for p in parts]
        if any(dense.quantization_mode is not None for dense in denses):
            # A quantized kernel is not a plain (D, H, K) tensor: one matmul each.
            projected = [dense(inputs) for dense in denses]  # (B, T, H, K) each
            if "q" in parts:
                projected[0] = projected[0] * ops.cast(self._scale(), projected[0].dtype)
            if heads_first:
                projected = [ops.transpose(x, (0, 2, 1, 3)) for x in projected]
            return projected
        dtype = inputs.dtype
        kernels, biases, widths = [], [], []
        for part, dense in zip(parts, denses):
            kernel = ops.cast(dense.kernel, dtype)  # (D, H, K)
            bias = ops.cast(dense.bias, dtype) if dense.bias is not None else None
            if part == "q":
                scale = ops.cast(self._scale(), dtype)
                kernel = kernel * scale
                bias = None if bias is None else bias * scale
            widths.append(kernel.shape[-1])
            kernels.append(ops.reshape(kernel, (kernel.shape[0], -1)))  # (D, H * K)
            if bias is not None:
                biases.append(ops.reshape(bias, (-1,)))  # (H * K,)
        kernel = kernels[0] if len(kernels) == 1 else ops.concatenate(kernels, axis=-1)
        batch_size, length = ops.shape(inputs)[0], ops.shape(inputs)[1]
        # A (B*T, D) @ (D, N) matmul, N = H * (K + K + V): a rank-3 matmul would be
        # a batch matmul whose kernel gradient sums B outer products.
        x = ops.matmul(ops.reshape(inputs, (-1, inputs.shape[-1])), kernel)  # (B*T, N)
        if biases:
            x = x + (biases[0] if len(biases) == 1 else ops.concatenate(biases, axis=-1))
        heads = self.num_heads
        if len(parts) == 1:
            x = ops.reshape(x, (batch_size, length, heads, widths[0]))  # (B, T, H, W)
            return [ops.transpose(x, (0, 2, 1, 3)) if heads_first else x]
        if len(set(widths)) == 1:
            # One transpose for all parts: (B, T, n, H, K) -> (n, B, H, T, K).
            x = ops.reshape(x, (batch_size, length, len(parts), heads, widths[0]))
            x = ops.transpose(x, (2, 0, 3, 1, 4) if heads_first else (2, 0, 1, 3, 4))
            return list(ops.unstack(x, len(parts), axis=0))
        sizes = [heads * width for width in widths]
        splits = [sum(sizes[: i + 1]) for i in range(len(sizes) - 1)]
        projected = []
        for x_part, width in zip(ops.split(x, splits, axis=-1), widths):
            x_part = ops.reshape(x_part, (batch_size, length, heads, width))  # (B, T, H, W)
            projected.append(ops.transpose(x_part, (0, 2, 1, 3)) if heads_first else x_part)
        return projected

    def _output_projection(self, x):
        """`output_dense` of the heads `x` (B, H, T, V), as one (B*T, H*V) @ (H*V, D_out)
        matmul: the rank-3 matmul that `EinsumDense` runs is a batch matmul whose
        kernel gradient sums B outer products (`_project` avoids it the same way)."""
        dense = self.output_dense
        x = ops.transpose(x, (0, 2, 1, 3))  # (B, T, H, V)
        if dense.quantization_mode is not None:
            return dense(x)
        batch_size, length = ops.shape(x)[0], ops.shape(x)[1]
        kernel = ops.cast(dense.kernel, x.dtype)  # (H, V, D_out)
        heads, width, output_dim = kernel.shape
        y = ops.matmul(
            ops.reshape(x, (-1, heads * width)), ops.reshape(kernel, (heads * width, output_dim))
        )  # (B*T, D_out)
        if dense.bias is not None:
            y = y + ops.cast(dense.bias, y.dtype)
        return ops.reshape(y, (batch_size, length, output_dim))

    def _scale(self):
        return 1.0 / math.sqrt(self.key_dim)

    def _read_cache(self, query, key, value, cache, cache_index, self_attention):
        """Returns q (B, H, T, K), keys (B, H, S_max, K), values and the cache after
        writing the new keys and values at `cache_index` (unchanged when
        `cache_index` is None)."""
        if len(cache.shape) != 5 or cache.shape[1] != 2:
            raise ValueError(
                "cache must have shape (B, 2, S_max, num_heads, key_dim); received cache "
                f"with shape {tuple(cache.shape)}"
            )
        if (self.value_dim or self.key_dim) != self.key_dim:
            raise ValueError(
                "a cache stacks keys and values, so value_dim must equal key_dim; received "
                f"key_dim={self.key_dim}, value_dim={self.value_dim}"
            )
        if cache_index is None:
            (q,) = self._project(query, "q")
        else:
            if self_attention:
                q, k, v = self._project(query, "qkv", heads_first=False)  # (B, T, H, K)
            else:
                (q,) = self._project(query, "q", heads_first=False)
                k, v = self._project(value, "kv", False) if key is value else (
                    self._project(key, "k", False) + self._project(value, "v", False)
                )
            q = ops.transpose(q, (0, 2, 1, 3))  # (B, H, T, K)
            start = [0, 0, cache_index, 0, 0]
            new = ops.cast(ops.stack([k, v], axis=1), cache.dtype)  # (B, 2, T, H, K)
            cache = ops.slice_update(cache, start, new)  # (B, 2, S_max, H, K)
        keys = ops.transpose(cache[:, 0], (0, 2, 1, 3))  # (B, H, S_max, K)
        values = ops.transpose(cache[:, 1], (0, 2, 1, 3))
        return q, keys, values, cache

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "key_dim": self.key_dim,
                "value_dim": self.value_dim,
                "dropout": self.dropout,
                "use_bias": self.use_bias,
                "output_dim": self.output_dim,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
                "seed": self.seed,
            }
        )
        return config
