"""MaskedLMHead: against keras-hub with copied weights (tied and untied), what it reads,
masks, mixed precision, and the shared layer checks."""
import keras
import keras_hub
import numpy as np
import pytest

from layers.masked_lm_head import MaskedLMHead
from layers.reversible_embedding import ReversibleEmbedding
from layers.token_and_position_embedding import TokenAndPositionEmbedding
from tests.layers.testing import run_layer_test

B, T, D, V, P = 2, 6, 8, 13, 3
rng = np.random.default_rng(0)
HIDDEN = rng.normal(size=(B, T, D)).astype("float32")  # (B, T, D)
POSITIONS = np.array([[1, 4, 0], [5, 2, 2]], dtype="int32")  # (B, P)


def to_numpy(x):
    return keras.ops.convert_to_numpy(x)


def randomize(layer):
    for w in layer.weights:
        w.assign(rng.normal(scale=0.5, size=w.shape).astype("float32"))


def hub_pair(tied, activation=None):
    """Ours and keras-hub's head (on copies of one embedding when tied), with
    keras-hub's random weights copied into ours role by role."""
    kwargs = {"intermediate_activation": "gelu", "activation": activation}
    if tied:
        hub_embedding = keras_hub.layers.ReversibleEmbedding(V, D)
        our_embedding = ReversibleEmbedding(V, D)
        hub_embedding.build()
        our_embedding.build()
        randomize(hub_embedding)
        our_embedding.set_weights(hub_embedding.get_weights())
        hub = keras_hub.layers.MaskedLMHead(token_embedding=hub_embedding, **kwargs)
        ours = MaskedLMHead(token_embedding=our_embedding, **kwargs)
    else:
        hub = keras_hub.layers.MaskedLMHead(vocabulary_size=V, **kwargs)
        ours = MaskedLMHead(vocabulary_size=V, **kwargs)
    hub(HIDDEN, mask_positions=POSITIONS)
    ours(HIDDEN, mask_positions=POSITIONS)
    randomize(hub._intermediate_dense)
    randomize(hub._intermediate_layer_norm)
    hub._bias.assign(rng.normal(size=(V,)).astype("float32"))
    pairs = [
        (ours.intermediate_dense, hub._intermediate_dense),
        (ours.intermediate_layer_norm, hub._intermediate_layer_norm),
    ]
    for dst, src in pairs:
        dst.set_weights(src.get_weights())
    ours.output_bias.assign(hub._bias)
    if not tied:
        hub._kernel.assign(rng.normal(size=(D, V)).astype("float32"))
        ours.output_kernel.assign(hub._kernel)
    return ours, hub


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("activation", [None, "softmax"])
def test_equals_keras_hub_with_copied_weights(tied, activation):
    ours, hub = hub_pair(tied, activation)
    # Every weight of ours was copied: same count, same shapes, as keras-hub's.
    assert [tuple(w.shape) for w in ours.weights] == [tuple(w.shape) for w in hub.weights]
    out = to_numpy(ours(HIDDEN, mask_positions=POSITIONS))
    assert out.shape == (B, P, V)
    np.testing.assert_allclose(out, to_numpy(hub(HIDDEN, mask_positions=POSITIONS)), atol=1e-5)


def test_equals_a_manual_computation_with_the_tied_table():
    ours, _ = hub_pair(tied=True)
    gathered = np.take_along_axis(HIDDEN, POSITIONS[..., None], axis=1)  # (B, P, D)
    kernel, bias = (to_numpy(w) for w in ours.intermediate_dense.weights)
    x = to_numpy(keras.activations.gelu(gathered @ kernel + bias))
    gamma, beta = (to_numpy(w) for w in ours.intermediate_layer_norm.weights)
    x = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * gamma + beta
    expected = x @ to_numpy(ours.token_embedding.embeddings).T + to_numpy(ours.output_bias)
    np.testing.assert_allclose(to_numpy(ours(HIDDEN, mask_positions=POSITIONS)), expected, atol=1e-5)


@pytest.mark.parametrize("tied", [True, False])
def test_run_layer_test(tied, tmp_path):
    init = {"vocabulary_size": V}
    if tied:
        embedding = ReversibleEmbedding(V, D)
        embedding.build()
        init = {"token_embedding": embedding}
    run_layer_test(
        MaskedLMHead,
        init,
        HIDDEN,
        call_kwargs={"mask_positions": POSITIONS},
        expected_output_shape=(B, P, V),
        tmp_path=tmp_path,
    )


def test_reads_only_the_masked_positions_and_drops_the_sequence_mask():
    head = MaskedLMHead(vocabulary_size=V)
    before = to_numpy(head(HIDDEN, mask_positions=POSITIONS))
    changed = HIDDEN.copy()
    for b in range(B):
        others = np.setdiff1d(np.arange(T), POSITIONS[b])
        changed[b, others] += rng.normal(size=(len(others), D)) * 10.0
    np.testing.assert_allclose(to_numpy(head(changed, mask_positions=POSITIONS)), before, atol=1e-6)
    # A repeated position gives the same prediction twice.
    np.testing.assert_allclose(before[1, 1], before[1, 2], atol=1e-6)

    # In a functional model the (B, T) padding mask does not land on the (B, P) output.
    ids = keras.Input((T,), dtype="int32")
    positions = keras.Input((P,), dtype="int32")
    embedding = TokenAndPositionEmbedding(V, T, D)
    logits = MaskedLMHead(token_embedding=embedding.token_embedding)(
        embedding(ids), mask_positions=positions
    )
    model = keras.Model([ids, positions], logits)
    out = model([np.array([[3, 4, 5, 0, 0, 0]] * B), POSITIONS])
    assert out.shape == (B, P, V)
    from keras.src.backend import get_keras_mask

    assert get_keras_mask(out) is None


@keras.saving.register_keras_serializable(package="tests")
class TinyMaskedLM(keras.Model):
    """The tying pattern for models: the head is made from the embedding in
    `__init__`, so a model revived from its config is tied again."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.embedding = TokenAndPositionEmbedding(
            V, T, D, merge="concat", position_dim=4, num_segments=2
        )
        self.head = MaskedLMHead(token_embedding=self.embedding.token_embedding)

    def call(self, inputs):
        ids, segments, positions = inputs
        hidden = self.embedding(ids, segment_ids=segments)  # (B, T, D + 4)
        return self.head(hidden, mask_positions=positions)  # (B, P, V)


def test_tied_head_on_a_concat_embedding_shares_the_token_table(tmp_path):
    """With merge='concat' the hidden width (D + 4) differs from the token width D:
    the intermediate dense maps back to D, and the logits use the same table."""
    ids = rng.integers(1, V, size=(B, T)).astype("int32")
    segments = (np.arange(T)[None] >= 3).astype("int32").repeat(B, 0)
    inputs = [ids, segments, POSITIONS]
    model = TinyMaskedLM()
    model(inputs)
    table = model.embedding.token_embedding.embeddings
    assert tuple(model.head.intermediate_dense.kernel.shape) == (D + 4, D)
    assert [w for w in model.weights if tuple(w.shape) == (V, D)] == [table]
    # A gradient step on the head's loss moves the shared table.
    model.compile(
        optimizer=keras.optimizers.SGD(1.0),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    before = to_numpy(table).copy()
    model.train_on_batch(inputs, np.take_along_axis(ids, POSITIONS, 1))
    assert not np.allclose(before, to_numpy(table))
    # .keras round trip: identical logits, and still one shared table.
    path = str(tmp_path / "mlm.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(to_numpy(loaded(inputs)), to_numpy(model(inputs)), atol=1e-6)
    assert loaded.head.token_embedding is loaded.embedding.token_embedding


@pytest.mark.parametrize("reverse_dtype, atol", [(None, 2e-2), ("float32", 1e-5)])
def test_float32_head_in_a_mixed_precision_model(reverse_dtype, atol):
    """`dtype="float32"` gives float32 logits; the tied projection runs in the
    embedding's `reverse_dtype` (float16 by default under mixed_float16)."""
    embedding = TokenAndPositionEmbedding(V, T, D, reverse_dtype=reverse_dtype, dtype="mixed_float16")
    ids = rng.integers(1, V, size=(B, T)).astype("int32")
    hidden = embedding(ids)  # float16
    head = MaskedLMHead(token_embedding=embedding.token_embedding, dtype="float32")
    logits = head(hidden, mask_positions=POSITIONS)
    assert hidden.dtype == "float16" and logits.dtype == "float32"
    # The same head run in float32 throughout, with the table copied as its kernel.
    full = MaskedLMHead(vocabulary_size=V)
    full(keras.ops.cast(hidden, "float32"), mask_positions=POSITIONS)
    full.intermediate_dense.set_weights(head.intermediate_dense.get_weights())
    full.intermediate_layer_norm.set_weights(head.intermediate_layer_norm.get_weights())
    full.output_kernel.assign(keras.ops.transpose(embedding.token_embedding.embeddings))
    expected = to_numpy(full(keras.ops.cast(hidden, "float32"), mask_positions=POSITIONS))
    np.testing.assert_allclose(to_numpy(logits), expected, atol=atol)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({}, "MaskedLMHead needs vocabulary_size or token_embedding; received vocabulary_size=None, token_embedding=None"),
        ({"vocabulary_size": 0}, "vocabulary_size must be None or a positive int; received vocabulary_size=0"),
        ({"vocabulary_size": 7, "token_embedding": ReversibleEmbedding(V, D)}, f"vocabulary_size must equal token_embedding.input_dim; received vocabulary_size=7, token_embedding.input_dim={V}"),
        ({"token_embedding": TokenAndPositionEmbedding(V, T, D)}, r"token_embedding must be a reversible embedding .*received TokenAndPositionEmbedding"),
    ],
)
def test_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MaskedLMHead(**kwargs)
