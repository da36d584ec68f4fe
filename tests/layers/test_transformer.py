"""TransformerEncoderBlock and TransformerDecoderBlock: against keras-hub with copied
weights, mask properties, cached decoding, and the shared layer checks."""
import keras
import keras_hub
import numpy as np
import pytest

from layers.token_and_position_embedding import TokenAndPositionEmbedding
from layers.transformer_decoder import TransformerDecoderBlock
from layers.transformer_encoder import TransformerEncoderBlock
from tests.layers.testing import run_layer_test

B, T, S, D, H, FF = 2, 6, 5, 8, 2, 16
rng = np.random.default_rng(0)
X = rng.normal(size=(B, T, D)).astype("float32")  # decoder / encoder input
MEMORY = rng.normal(size=(B, S, D)).astype("float32")  # encoder outputs
# Row 0 is full; row 1 has padding at the end.
DECODER_PADDING = np.array([[1] * T, [1] * (T - 2) + [0] * 2], dtype=bool)  # (B, T)
ENCODER_PADDING = np.array([[1] * S, [1] * (S - 3) + [0] * 3], dtype=bool)  # (B, S)
SIZES = {"hidden_dim": D, "num_heads": H, "intermediate_dim": FF}


def to_numpy(x):
    return keras.ops.convert_to_numpy(x)


def assert_close(a, b, atol=1e-5):
    np.testing.assert_allclose(to_numpy(a), to_numpy(b), atol=atol, rtol=atol)


# --- weight copying by role -----------------------------------------------------------


def _attention_pairs(ours, hub):
    return [
        (ours.query_dense, hub._query_dense),
        (ours.key_dense, hub._key_dense),
        (ours.value_dense, hub._value_dense),
        (ours.output_dense, hub._output_dense),
    ]


def encoder_pairs(ours, hub):
    return _attention_pairs(ours.self_attention, hub._self_attention_layer) + [
        (ours.self_attention_norm, hub._self_attention_layer_norm),
        (ours.feedforward_norm, hub._feedforward_layer_norm),
        (ours.feedforward_intermediate, hub._feedforward_intermediate_dense),
        (ours.feedforward_output, hub._feedforward_output_dense),
    ]


def decoder_pairs(ours, hub):
    pairs = _attention_pairs(ours.self_attention, hub._self_attention_layer) + [
        (ours.self_attention_norm, hub._self_attention_layer_norm),
        (ours.feedforward_norm, hub._feedforward_layer_norm),
        (ours.feedforward_intermediate, hub._feedforward_intermediate_dense),
        (ours.feedforward_output, hub._feedforward_output_dense),
    ]
    if ours.cross_attention:
        pairs += _attention_pairs(ours.cross_attention_layer, hub._cross_attention_layer)
        pairs.append((ours.cross_attention_norm, hub._cross_attention_layer_norm))
    return pairs


def randomize_and_copy(pairs, ours, hub):
    """Gives every keras-hub weight random values (so that gammas, betas and biases
    are not 1/0 and a swapped role would show), then copies them role by role."""
    for dst, src in pairs:
        src_weights, dst_weights = src.weights, dst.weights
        assert [w.name for w in dst_weights] == [w.name for w in src_weights]
        for d, s in zip(dst_weights, src_weights):
            assert tuple(d.shape) == tuple(s.shape), (dst.name, d.name, d.shape, s.shape)
            s.assign(rng.normal(scale=0.5, size=s.shape).astype("float32"))
            d.assign(s.value)
    copied = sum(len(dst.weights) for dst, _ in pairs)
    assert copied == len(ours.weights) == len(hub.weights)


def encoder_pair(normalize_first, **kwargs):
    ours = TransformerEncoderBlock(**SIZES, normalize_first=normalize_first, **kwargs)
    hub = keras_hub.layers.TransformerEncoder(FF, H, normalize_first=normalize_first)
    ours(X)
    hub(X)
    randomize_and_copy(encoder_pairs(ours, hub), ours, hub)
    return ours, hub


def decoder_pair(normalize_first, cross_attention=True):
    ours = TransformerDecoderBlock(
        **SIZES, normalize_first=normalize_first, cross_attention=cross_attention
    )
    hub = keras_hub.layers.TransformerDecoder(FF, H, normalize_first=normalize_first)
    if cross_attention:
        ours(X, encoder_outputs=MEMORY)
        hub(X, MEMORY)
    else:
        ours(X)
        hub(X)
    randomize_and_copy(decoder_pairs(ours, hub), ours, hub)
    return ours, hub


# --- equality with keras-hub --------------------------------------------------------


@pytest.mark.parametrize("normalize_first", [False, True])
def test_encoder_equals_keras_hub(normalize_first):
    ours, hub = encoder_pair(normalize_first)
    assert_close(ours(X), hub(X))
    assert_close(ours(X, padding_mask=DECODER_PADDING), hub(X, padding_mask=DECODER_PADDING))
    attention = rng.random((B, T, T)) > 0.3
    attention[:, :, 0] = True  # every query keeps at least one key
    assert_close(
        ours(X, padding_mask=DECODER_PADDING, attention_mask=attention),
        hub(X, padding_mask=DECODER_PADDING, attention_mask=attention),
    )


@pytest.mark.parametrize("normalize_first", [False, True])
def test_decoder_equals_keras_hub(normalize_first):
    ours, hub = decoder_pair(normalize_first)
    assert_close(ours(X, encoder_outputs=MEMORY), hub(X, MEMORY))
    ours_out = ours(
        X,
        encoder_outputs=MEMORY,
        decoder_padding_mask=DECODER_PADDING,
        encoder_padding_mask=ENCODER_PADDING,
    )
    hub_out = hub(
        X,
        MEMORY,
        decoder_padding_mask=DECODER_PADDING,
        encoder_padding_mask=ENCODER_PADDING,
    )
    assert_close(ours_out, hub_out)
    assert_close(
        ours(X, encoder_outputs=MEMORY, use_causal_mask=False),
        hub(X, MEMORY, use_causal_mask=False),
    )


@pytest.mark.parametrize("normalize_first", [False, True])
def test_decoder_only_equals_keras_hub(normalize_first):
    ours, hub = decoder_pair(normalize_first, cross_attention=False)
    assert_close(
        ours(X, decoder_padding_mask=DECODER_PADDING), hub(X, decoder_padding_mask=DECODER_PADDING)
    )


# --- cached decoding ----------------------------------------------------------------


@pytest.mark.parametrize("normalize_first", [False, True])
def test_decoder_cache_token_by_token_equals_full_pass(normalize_first):
    block, _ = decoder_pair(normalize_first)
    full = to_numpy(block(X, encoder_outputs=MEMORY, encoder_padding_mask=ENCODER_PADDING))
    cache = np.zeros((B, 2, T, H, D // H), "float32")  # (B, 2, S_max, H, K)
    steps = []
    for t in range(T):
        out, cache = block(
            X[:, t : t + 1],
            encoder_outputs=MEMORY,
            encoder_padding_mask=ENCODER_PADDING,
            self_attention_cache=cache,
            self_attention_cache_index=keras.ops.convert_to_tensor(t),
        )
        assert tuple(cache.shape) == (B, 2, T, H, D // H)
        steps.append(to_numpy(out)[:, 0])
    np.testing.assert_allclose(np.stack(steps, axis=1), full, atol=1e-5, rtol=1e-5)


def test_decoder_cache_step_compiles_with_xla():
    block, _ = decoder_pair(False)
    full = to_numpy(block(X, encoder_outputs=MEMORY))

    import tensorflow as tf

    @tf.function(jit_compile=True)
    def step(x_t, cache, t):
        return block(x_t, encoder_outputs=MEMORY, self_attention_cache=cache, self_attention_cache_index=t)

    cache = tf.zeros((B, 2, T, H, D // H))
    for t in range(T):
        out, cache = step(X[:, t : t + 1], cache, tf.constant(t))
        np.testing.assert_allclose(to_numpy(out)[:, 0], full[:, t], atol=1e-5, rtol=1e-5)


# --- mask properties ----------------------------------------------------------------


def _perturb(x, where):
    """Returns x with fresh noise at the (batch, position) pairs in `where`."""
    x = x.copy()
    x[where] = rng.normal(size=x[where].shape) * 10.0
    return x


@pytest.mark.parametrize("attention", ["softmax", "linear"])
def test_encoder_padded_positions_change_no_valid_output(attention):
    block = TransformerEncoderBlock(**SIZES, attention=attention)
    before = to_numpy(block(X, padding_mask=DECODER_PADDING))
    after = to_numpy(block(_perturb(X, ~DECODER_PADDING), padding_mask=DECODER_PADDING))
    np.testing.assert_allclose(after[DECODER_PADDING], before[DECODER_PADDING], atol=1e-5)
    assert not np.allclose(after[~DECODER_PADDING], before[~DECODER_PADDING])


def test_decoder_padded_positions_change_no_valid_output():
    block = TransformerDecoderBlock(**SIZES)
    kwargs = {"decoder_padding_mask": DECODER_PADDING, "encoder_padding_mask": ENCODER_PADDING}
    before = to_numpy(block(X, encoder_outputs=MEMORY, **kwargs))
    after = to_numpy(
        block(
            _perturb(X, ~DECODER_PADDING),
            encoder_outputs=_perturb(MEMORY, ~ENCODER_PADDING),
            **kwargs,
        )
    )
    np.testing.assert_allclose(after[DECODER_PADDING], before[DECODER_PADDING], atol=1e-5)


@pytest.mark.parametrize("cross_attention", [True, False])
def test_decoder_causal_mask_leaks_nothing_from_the_future(cross_attention):
    block = TransformerDecoderBlock(**SIZES, cross_attention=cross_attention, normalize_first=True)
    kwargs = {"encoder_outputs": MEMORY} if cross_attention else {}
    before = to_numpy(block(X, **kwargs))
    for t in range(T):
        changed = X.copy()
        changed[:, t] += rng.normal(size=(B, D)) * 10.0
        after = to_numpy(block(changed, **kwargs))
        np.testing.assert_allclose(after[:, :t], before[:, :t], atol=1e-5)
        assert not np.allclose(after[:, t], before[:, t])
    # Without the causal mask, the future does leak.
    changed = X.copy()
    changed[:, -1] += rng.normal(size=(B, D)) * 10.0
    leaky_before = to_numpy(block(X, use_causal_mask=False, **kwargs))
    leaky_after = to_numpy(block(changed, use_causal_mask=False, **kwargs))
    assert not np.allclose(leaky_after[:, 0], leaky_before[:, 0])


def test_all_padding_rows_give_finite_outputs():
    nothing = np.zeros((B, T), bool)
    encoder = TransformerEncoderBlock(**SIZES)
    assert np.all(np.isfinite(to_numpy(encoder(X, padding_mask=nothing))))
    decoder = TransformerDecoderBlock(**SIZES)
    out = decoder(
        X,
        encoder_outputs=MEMORY,
        decoder_padding_mask=nothing,
        encoder_padding_mask=np.zeros((B, S), bool),
    )
    assert np.all(np.isfinite(to_numpy(out)))


def test_implicit_mask_equals_explicit_and_propagates():
    ids = np.array([[4, 5, 6, 7, 8, 9], [4, 5, 6, 7, 0, 0]], dtype="int32")
    embedded = TokenAndPositionEmbedding(10, T, D)(ids)  # carries the mask ids != 0
    encoder = TransformerEncoderBlock(**SIZES)
    implicit = encoder(embedded)
    assert_close(implicit, encoder(embedded, padding_mask=ids != 0))

    decoder = TransformerDecoderBlock(**SIZES)
    memory = TokenAndPositionEmbedding(10, T, D)(ids)
    assert_close(
        decoder(embedded, encoder_outputs=memory),
        decoder(embedded, encoder_outputs=memory, decoder_padding_mask=ids != 0, encoder_padding_mask=ids != 0),
    )

    # In a functional model the mask reaches a masked pooling after both blocks.
    inputs = keras.Input((T,), dtype="int32")
    x = TokenAndPositionEmbedding(10, T, D)(inputs)
    x = TransformerEncoderBlock(**SIZES)(x)
    x = TransformerDecoderBlock(**SIZES, cross_attention=False)(x)
    pooled = keras.layers.GlobalAveragePooling1D()(x)
    model = keras.Model(inputs, pooled)
    sequence = keras.Model(inputs, model.layers[-2].output)
    np.testing.assert_allclose(
        to_numpy(model(ids))[1], to_numpy(sequence(ids))[1, :4].mean(0), atol=1e-5
    )


# --- shared layer checks and errors -------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"normalize_first": False, "dropout": 0.1},
        {"normalize_first": True, "attention": "linear", "activation": "gelu"},
    ],
)
def test_encoder_run_layer_test(kwargs, tmp_path):
    run_layer_test(
        TransformerEncoderBlock,
        {**SIZES, **kwargs},
        X,
        call_kwargs={"padding_mask": DECODER_PADDING},
        expected_output_shape=(B, T, D),
        tmp_path=tmp_path,
    )


def test_decoder_run_layer_test(tmp_path):
    run_layer_test(
        TransformerDecoderBlock,
        {**SIZES, "normalize_first": True},
        [X, MEMORY],
        call_kwargs={"decoder_padding_mask": DECODER_PADDING, "encoder_padding_mask": ENCODER_PADDING},
        expected_output_shape=(B, T, D),
        tmp_path=tmp_path,
    )


def test_decoder_only_run_layer_test(tmp_path):
    run_layer_test(
        TransformerDecoderBlock,
        {**SIZES, "cross_attention": False},
        X,
        expected_output_shape=(B, T, D),
        tmp_path=tmp_path,
    )


@pytest.mark.parametrize(
    "cls, kwargs, message",
    [
        (TransformerEncoderBlock, {"hidden_dim": 10, "num_heads": 4}, "num_heads must divide hidden_dim; received hidden_dim=10, num_heads=4"),
        (TransformerEncoderBlock, {"attention": "sparse"}, "attention must be one of .*received attention='sparse'"),
        (TransformerDecoderBlock, {"dropout": 1.5}, r"dropout must be in \[0, 1\); received dropout=1.5"),
        (TransformerDecoderBlock, {"intermediate_dim": 0}, "intermediate_dim must be a positive int; received intermediate_dim=0"),
    ],
)
def test_constructor_errors(cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cls(**{**SIZES, **kwargs})


def test_call_errors():
    with pytest.raises(ValueError, match=r"the last axis of x must equal hidden_dim; received x shape=\(2, 6, 8\), hidden_dim=12"):
        TransformerEncoderBlock(12, 2, 16)(X)
    with pytest.raises(ValueError, match="cross_attention=True needs encoder_outputs"):
        TransformerDecoderBlock(**SIZES)(X)
    block = TransformerDecoderBlock(**SIZES, cross_attention=False)
    block(X)
    with pytest.raises(ValueError, match="encoder_outputs must be None when cross_attention=False"):
        block(X, encoder_outputs=MEMORY)
    with pytest.raises(ValueError, match="self_attention_cache and self_attention_cache_index go together"):
        block(X[:, :1], self_attention_cache=np.zeros((B, 2, T, H, D // H), "float32"))
    linear = TransformerEncoderBlock(**SIZES, attention="linear")
    with pytest.raises(ValueError, match="attention_mask is not supported with attention='linear'"):
        linear(X, attention_mask=np.ones((B, T, T), bool))


@pytest.mark.parametrize("normalize_first", [False, True])
def test_decoder_returns_cross_attention_scores(normalize_first):
    block = TransformerDecoderBlock(**SIZES, normalize_first=normalize_first)
    kwargs = {"decoder_padding_mask": DECODER_PADDING, "encoder_padding_mask": ENCODER_PADDING}
    plain = to_numpy(block(X, encoder_outputs=MEMORY, **kwargs))
    outputs, scores = block(X, encoder_outputs=MEMORY, return_cross_attention_scores=True, **kwargs)
    np.testing.assert_allclose(to_numpy(outputs), plain, atol=1e-6)
    scores = to_numpy(scores)  # (B, H, T, S)
    assert scores.shape == (B, H, T, S)
    np.testing.assert_allclose(scores.sum(-1), 1.0, atol=1e-5)
    assert np.all(scores[1, :, :, S - 3:] == 0)  # padded source positions get no weight
