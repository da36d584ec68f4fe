"""ReversibleEmbedding: against keras-hub with copied weights in both directions, masks,
mixed precision, and the shared layer checks."""
import keras
import keras_hub
import numpy as np
import pytest

from layers.reversible_embedding import ReversibleEmbedding
from tests.layers.testing import run_layer_test

V, D = 11, 6
rng = np.random.default_rng(0)
IDS = np.array([[5, 7, 9, 0, 0], [3, 1, 4, 1, 10]], dtype="int32")  # (B=2, T=5)
HIDDEN = rng.normal(size=(2, 5, D)).astype("float32")  # (B, T, D)


def to_numpy(x):
    return keras.ops.convert_to_numpy(x)


def pair(tie_weights):
    """Ours and keras-hub's, with keras-hub's random weights copied into ours."""
    ours = ReversibleEmbedding(V, D, tie_weights=tie_weights)
    hub = keras_hub.layers.ReversibleEmbedding(V, D, tie_weights=tie_weights)
    ours(IDS)
    hub(IDS)
    assert [w.name for w in ours.weights] == [w.name for w in hub.weights]
    for s in hub.weights:
        s.assign(rng.normal(size=s.shape).astype("float32"))
    ours.set_weights(hub.get_weights())
    return ours, hub


@pytest.mark.parametrize("tie_weights", [True, False])
def test_equals_keras_hub_in_both_directions(tie_weights):
    ours, hub = pair(tie_weights)
    np.testing.assert_allclose(to_numpy(ours(IDS)), to_numpy(hub(IDS)), atol=1e-6)
    logits = to_numpy(ours(HIDDEN, reverse=True))
    assert logits.shape == (2, 5, V)
    np.testing.assert_allclose(logits, to_numpy(hub(HIDDEN, reverse=True)), atol=1e-5)
    kernel = to_numpy(ours.embeddings).T if tie_weights else to_numpy(ours.reverse_embeddings)
    np.testing.assert_allclose(logits, HIDDEN @ kernel, atol=1e-5)
    if tie_weights:  # tied: one (V, D) table serves both directions
        assert len(ours.weights) == 1
    else:
        assert not np.allclose(logits, HIDDEN @ to_numpy(ours.embeddings).T)


@pytest.mark.parametrize("reverse, inputs", [(False, IDS), (True, HIDDEN)])
def test_run_layer_test(reverse, inputs, tmp_path):
    run_layer_test(
        ReversibleEmbedding,
        {"input_dim": V, "output_dim": D, "mask_zero": True},
        inputs,
        call_kwargs={"reverse": reverse},
        expected_output_shape=(2, 5, V) if reverse else (2, 5, D),
        tmp_path=tmp_path,
    )


def test_untied_save_load_keeps_both_matrices(tmp_path):
    ours, _ = pair(tie_weights=False)
    inputs = keras.Input((5,), dtype="int32")
    model = keras.Model(inputs, ours(ours(inputs), reverse=True))
    path = str(tmp_path / "untied.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(to_numpy(loaded(IDS)), to_numpy(model(IDS)), atol=1e-6)
    assert len(loaded.weights) == 2


def test_mask_from_id_zero_and_through_the_reverse_projection():
    embedding = ReversibleEmbedding(V, D, mask_zero=True)
    np.testing.assert_array_equal(to_numpy(embedding.compute_mask(IDS)), IDS != 0)
    assert ReversibleEmbedding(V, D).compute_mask(IDS) is None

    # The (B, T) mask of the ids rides on the hidden states and on the logits.
    inputs = keras.Input((5,), dtype="int32")
    hidden = embedding(inputs)
    logits = embedding(keras.layers.Dense(D)(hidden), reverse=True)
    pooled = keras.layers.GlobalAveragePooling1D()(logits)
    model = keras.Model(inputs, [logits, pooled])
    full, mean = (to_numpy(t) for t in model(IDS))
    np.testing.assert_allclose(mean[0], full[0, :3].mean(0), atol=1e-6)
    np.testing.assert_allclose(mean[1], full[1].mean(0), atol=1e-6)


def test_mixed_precision_logits_dtype():
    ours, _ = pair(tie_weights=True)
    reference = to_numpy(ours(HIDDEN, reverse=True))

    mixed = ReversibleEmbedding(V, D, dtype="mixed_float16")
    mixed(IDS)
    mixed.set_weights(ours.get_weights())
    assert mixed(IDS).dtype == "float16"
    assert mixed(HIDDEN, reverse=True).dtype == "float16"  # the compute dtype by default

    # reverse_dtype="float32": float32 logits from the full-precision kernel.
    head = ReversibleEmbedding(V, D, reverse_dtype="float32", dtype="mixed_float16")
    head(IDS)
    head.set_weights(ours.get_weights())
    assert head(IDS).dtype == "float16"
    logits = head(HIDDEN, reverse=True)
    assert logits.dtype == "float32"
    np.testing.assert_allclose(to_numpy(logits), reference, atol=1e-6)
    # From float16 hidden states (a mixed model's), still float32 logits.
    assert head(keras.ops.cast(HIDDEN, "float16"), reverse=True).dtype == "float32"
    # A symbolic call reports the same dtype.
    symbolic = head(keras.Input((5, D), dtype="float16"), reverse=True)
    assert symbolic.dtype == "float32" and tuple(symbolic.shape) == (None, 5, V)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"input_dim": 0}, "input_dim must be a positive int; received input_dim=0"),
        ({"output_dim": 2.5}, "output_dim must be a positive int; received output_dim=2.5"),
    ],
)
def test_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ReversibleEmbedding(**{"input_dim": V, "output_dim": D, **kwargs})
