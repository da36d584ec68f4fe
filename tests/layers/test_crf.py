"""LinearChainCRF against brute-force enumeration of all K^T tag sequences (log Z, the
log-likelihood, the Viterbi path and its score), masks, constraints, XLA, round trips,
gradients and a small learning test; `iob2_allowed_transitions` by hand."""
import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras.src.backend import get_keras_mask  # as layers/masking.py reads it

from layers.crf import FORBIDDEN, LinearChainCRF, iob2_allowed_transitions


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _random_crf(num_tags, seed, **kwargs):
    crf = LinearChainCRF(num_tags, **kwargs)
    crf.build((None, None, num_tags))
    rng = np.random.default_rng(seed)
    crf.set_weights([rng.normal(size=w.shape).astype("float32") for w in crf.get_weights()])
    return crf


def _random_case(batch, length, num_tags, seed):
    """Potentials, tags and a right-padded mask with every length 0..T in the batch."""
    rng = np.random.default_rng(seed)
    potentials = rng.normal(scale=2.0, size=(batch, length, num_tags)).astype("float32")
    tags = rng.integers(0, num_tags, size=(batch, length)).astype("int32")
    lengths = np.array([length, 0, *rng.integers(0, length + 1, size=batch - 2)])
    mask = np.arange(length)[None, :] < lengths[:, None]
    return potentials, tags, mask


def _scores(crf):
    """The constrained (transitions, start, end) the layer uses, as numpy."""
    return tuple(_np(s) for s in crf._scores())


def _path_score(path, potentials, transitions, start, end):
    """score(y) of one unpadded row, written out."""
    score = start[path[0]] + end[path[-1]]
    score += sum(potentials[t, tag] for t, tag in enumerate(path))
    score += sum(transitions[a, b] for a, b in zip(path[:-1], path[1:]))
    return score


def _brute_force(potentials, mask, crf):
    """Per row: (log Z, best path, best score), enumerating every sequence of valid tags."""
    transitions, start, end = _scores(crf)
    results = []
    for row, valid in zip(potentials, mask):
        row = row[valid]
        if len(row) == 0:
            results.append((0.0, [], 0.0))
            continue
        paths = list(itertools.product(range(crf.num_tags), repeat=len(row)))
        scores = np.array([_path_score(p, row, transitions, start, end) for p in paths])
        best = int(np.argmax(scores))
        log_z = np.max(scores) + np.log(np.sum(np.exp(scores - np.max(scores))))
        results.append((log_z, list(paths[best]), scores[best]))
    return results


CASES = [(3, 1), (3, 4), (4, 3), (4, 2)]  # (K, T)


@pytest.mark.parametrize("boundary", [True, False], ids=["boundary", "no_boundary"])
@pytest.mark.parametrize("num_tags, length", CASES)
def test_log_partition_and_likelihood_equal_brute_force(num_tags, length, boundary):
    crf = _random_crf(num_tags, seed=length, use_boundary_transitions=boundary)
    potentials, tags, mask = _random_case(5, length, num_tags, seed=num_tags + length)
    expected = _brute_force(potentials, mask, crf)
    log_z = _np(crf.log_partition(potentials, mask))
    np.testing.assert_allclose(log_z, [e[0] for e in expected], rtol=1e-5, atol=1e-4)

    transitions, start, end = _scores(crf)
    gold = [
        _path_score(list(t[m]), p[m], transitions, start, end) if m.any() else 0.0
        for p, t, m in zip(potentials, tags, mask)
    ]
    np.testing.assert_allclose(_np(crf.sequence_score(potentials, tags, mask)), gold,
                               rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(_np(crf.log_likelihood(potentials, tags, mask)),
                               np.array(gold) - log_z, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(_np(crf.negative_log_likelihood(potentials, tags, mask)),
                               log_z - np.array(gold), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("num_tags, length", CASES)
def test_viterbi_equals_brute_force_argmax(num_tags, length):
    crf = _random_crf(num_tags, seed=10 + length)
    potentials, _, mask = _random_case(6, length, num_tags, seed=20 + num_tags * length)
    tags, score = crf.decode(potentials, mask, return_score=True)
    tags, score = _np(tags), _np(score)
    assert tags.dtype == np.int32 and tags.shape == mask.shape
    for row, valid, (_, best_path, best_score), row_score in zip(tags, mask, _brute_force(
            potentials, mask, crf), score):
        assert list(row[valid]) == best_path
        assert np.all(row[~valid] == 0)
        np.testing.assert_allclose(row_score, best_score, rtol=1e-5, atol=1e-4)


def test_mask_holes_and_left_padding_are_the_valid_subsequence():
    """Only the valid positions form the chain, wherever the padding is."""
    crf = _random_crf(3, seed=3)
    rng = np.random.default_rng(4)
    potentials = rng.normal(size=(3, 5, 3)).astype("float32")
    tags = rng.integers(0, 3, size=(3, 5)).astype("int32")
    mask = np.array([[0, 0, 1, 1, 1], [1, 0, 1, 0, 1], [1, 1, 1, 0, 0]], bool)
    for row in range(3):
        keep = mask[row]
        dense = potentials[row : row + 1, keep]
        np.testing.assert_allclose(_np(crf.log_likelihood(potentials, tags, mask))[row],
                                   _np(crf.log_likelihood(dense, tags[row : row + 1, keep]))[0],
                                   rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(_np(crf.decode(potentials, mask))[row, keep],
                                      _np(crf.decode(dense))[0])


def test_implicit_keras_mask_equals_explicit():
    crf = _random_crf(4, seed=5)
    ids = np.array([[3, 1, 2, 0], [2, 0, 0, 0]])
    embedded = keras.layers.Embedding(5, 4, mask_zero=True)(ids)  # carries a Keras mask
    explicit = ids != 0
    potentials = _np(embedded)
    np.testing.assert_array_equal(_np(crf.decode(embedded)), _np(crf.decode(potentials, explicit)))
    np.testing.assert_allclose(_np(crf.log_partition(embedded)),
                               _np(crf.log_partition(potentials, explicit)), rtol=1e-6)


def test_all_padding_rows_are_finite_and_zero():
    crf = _random_crf(3, seed=6)
    potentials = np.random.default_rng(0).normal(size=(2, 4, 3)).astype("float32")
    mask = np.zeros((2, 4), bool)
    tags = np.ones((2, 4), "int32")
    np.testing.assert_array_equal(_np(crf.log_likelihood(potentials, tags, mask)), [0.0, 0.0])
    decoded, score = crf.decode(potentials, mask, return_score=True)
    np.testing.assert_array_equal(_np(decoded), np.zeros((2, 4)))
    np.testing.assert_array_equal(_np(score), [0.0, 0.0])


def test_iob2_allowed_transitions_by_hand():
    names = ["B-LOC", "B-PER", "I-LOC", "I-PER", "O"]
    allowed = iob2_allowed_transitions(names)
    # rows: from; columns: to (B-LOC, B-PER, I-LOC, I-PER, O)
    assert allowed["allowed_transitions"] == [
        [True, True, True, False, True],  # B-LOC
        [True, True, False, True, True],  # B-PER
        [True, True, True, False, True],  # I-LOC
        [True, True, False, True, True],  # I-PER
        [True, True, False, False, True],  # O
    ]
    assert allowed["allowed_start"] == [True, True, False, False, True]
    with pytest.raises(ValueError, match=r"IOB2 tags.*'E-LOC'"):
        iob2_allowed_transitions(["O", "E-LOC"])
    with pytest.raises(ValueError, match="distinct"):
        iob2_allowed_transitions(["O", "O"])


def test_constraints_are_never_violated_and_match_brute_force():
    names = ["B-LOC", "B-PER", "I-LOC", "I-PER", "O"]
    allowed = iob2_allowed_transitions(names)
    crf = _random_crf(5, seed=7, **allowed)
    rng = np.random.default_rng(8)
    # Potentials that favour I- tags everywhere: the unconstrained path would break IOB2.
    potentials = rng.normal(size=(64, 6, 5)).astype("float32") + [0, 0, 3, 3, 0]
    mask = np.arange(6)[None, :] < rng.integers(1, 7, size=64)[:, None]
    tags = _np(crf.decode(potentials, mask))
    transitions = np.array(allowed["allowed_transitions"])
    start = np.array(allowed["allowed_start"])
    for row, valid in zip(tags, mask):
        path = row[valid]
        assert start[path[0]]
        assert all(transitions[a, b] for a, b in zip(path[:-1], path[1:]))
    assert (np.isin(tags[mask], [2, 3])).any(), "the test never exercises I- tags"
    # Constrained scores are the weights with -1e4 at the forbidden entries, and the
    # brute force over them agrees (a forbidden path never wins).
    scores, start_scores, _ = _scores(crf)
    assert scores[4, 2] == FORBIDDEN and start_scores[3] == FORBIDDEN
    for row, valid, (_, best, _) in zip(tags[:8], mask[:8], _brute_force(potentials[:8, :4],
                                                                         mask[:8, :4], crf)):
        if valid.sum() <= 4:
            assert list(row[valid]) == best


def test_constraints_in_training_give_forbidden_sequences_no_probability():
    crf = _random_crf(3, seed=9, allowed_transitions=[[True, False, True]] * 3,
                      allowed_end=[True, True, False])
    potentials = np.zeros((1, 2, 3), "float32")
    forbidden = crf.log_likelihood(potentials, np.array([[0, 1]]))
    ends_badly = crf.log_likelihood(potentials, np.array([[0, 2]]))
    assert _np(forbidden)[0] < -1e3 and _np(ends_badly)[0] < -1e3
    allowed = crf.log_likelihood(potentials, np.array([[0, 0]]))
    assert -10 < _np(allowed)[0] < 0


def test_jit_compile_equals_eager():
    crf = _random_crf(4, seed=11, **{"allowed_start": [True, False, True, True]})
    potentials, tags, mask = _random_case(4, 5, 4, seed=12)

    @tf.function(jit_compile=True)
    def jitted(potentials, tags, mask):
        return (crf.log_likelihood(potentials, tags, mask),
                *crf.decode(potentials, mask, return_score=True))

    eager = (crf.log_likelihood(potentials, tags, mask), *crf.decode(potentials, mask, True))
    for a, b in zip(jitted(potentials, tags, mask), eager):
        np.testing.assert_allclose(_np(a), _np(b), rtol=1e-5, atol=1e-5)


def test_dynamic_length_traces_once():
    crf = _random_crf(3, seed=13)
    decode = tf.function(crf.decode, input_signature=[tf.TensorSpec([None, None, 3]),
                                                      tf.TensorSpec([None, None], tf.bool)])
    for length in (1, 3, 6):
        potentials, _, mask = _random_case(3, length, 3, seed=length)
        np.testing.assert_array_equal(_np(decode(potentials, mask)),
                                      _np(crf.decode(potentials, mask)))
    assert len(decode._list_all_concrete_functions()) == 1


def test_gradients_reach_transitions_and_potentials():
    crf = _random_crf(3, seed=14)
    potentials, tags, mask = _random_case(4, 4, 3, seed=15)
    potentials = tf.Variable(potentials)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(crf.negative_log_likelihood(potentials, tags, mask))
    grads = tape.gradient(loss, [*crf.trainable_variables, potentials])
    assert len(crf.trainable_variables) == 3
    for grad in grads:
        assert grad is not None and np.all(np.isfinite(_np(grad)))
        assert np.abs(_np(grad)).sum() > 0
    # Padded positions get no gradient.
    np.testing.assert_array_equal(_np(grads[-1])[~mask], 0.0)


def test_config_round_trip_and_keras_save_load(tmp_path):
    allowed = iob2_allowed_transitions(["B-X", "I-X", "O"])
    crf = LinearChainCRF(3, use_boundary_transitions=False, allowed_end=[True, False, True],
                         transitions_initializer="random_normal", name="crf", **allowed)
    config = crf.get_config()
    assert {k: config[k] for k in ("num_tags", "use_boundary_transitions", "allowed_start")} == {
        "num_tags": 3, "use_boundary_transitions": False,
        "allowed_start": allowed["allowed_start"]}
    clone = LinearChainCRF.from_config(config)
    assert clone.get_config() == config
    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(crf))
    assert type(revived) is LinearChainCRF

    inputs = keras.Input((None, 4))
    potentials = crf(keras.layers.Dense(3)(inputs))
    model = keras.Model(inputs, potentials)
    x = np.random.default_rng(0).normal(size=(2, 5, 4)).astype("float32")
    mask = np.array([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]], bool)
    expected = _np(model.get_layer("crf").decode(model(x), mask))
    path = str(tmp_path / "crf.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    loaded_crf = loaded.get_layer("crf")
    assert loaded_crf.get_config() == config
    np.testing.assert_allclose(_np(loaded_crf.transitions), _np(crf.transitions))
    np.testing.assert_array_equal(_np(loaded_crf.decode(loaded(x), mask)), expected)


def test_call_passes_potentials_and_mask_through():
    crf = LinearChainCRF(4)
    embedded = keras.layers.Embedding(6, 4, mask_zero=True)(np.array([[1, 2, 0]]))
    out = crf(embedded)
    np.testing.assert_array_equal(_np(out), _np(embedded))
    np.testing.assert_array_equal(_np(get_keras_mask(out)), [[True, True, False]])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_tags": 0}, "num_tags must be a positive int; received num_tags=0"),
        ({"num_tags": 2, "allowed_transitions": [[True, False]]},
         r"allowed_transitions must be a \(K, K\) nested list of bools with K=2"),
        ({"num_tags": 2, "allowed_start": [1, 0]}, r"allowed_start must be a \(K,\) list"),
    ],
)
def test_errors_name_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LinearChainCRF(**kwargs)


def test_wrong_number_of_potentials_is_an_error():
    with pytest.raises(ValueError, match=r"num_tags=3 scores in the last axis; received "
                                         r"potentials with shape \(2, 4, 5\)"):
        LinearChainCRF(3)(np.zeros((2, 4, 5), "float32"))


def test_learns_alternating_tags_that_argmax_cannot():
    """Only the first token tells the tag; the others are noise and the tags alternate.

    A per-token argmax is at chance after the first token; the CRF learns the transitions
    and decodes whole sequences right.
    """
    rng = np.random.default_rng(0)
    batch, length = 64, 6
    first = rng.integers(0, 2, size=batch)
    tags = (first[:, None] + np.arange(length)[None, :]) % 2  # (B, T) alternating
    features = rng.normal(scale=0.3, size=(batch, length, 1)).astype("float32")
    features[:, 0, 0] = np.where(first == 1, 3.0, -3.0)
    lengths = rng.integers(2, length + 1, size=batch)
    mask = np.arange(length)[None, :] < lengths[:, None]

    keras.utils.set_random_seed(0)
    head = keras.layers.Dense(2)
    crf = LinearChainCRF(2)
    head.build((None, None, 1))
    crf.build((None, None, 2))
    variables = head.trainable_variables + crf.trainable_variables
    optimizer = keras.optimizers.Adam(0.05)

    @tf.function
    def train_step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(crf.negative_log_likelihood(head(features), tags, mask))
        optimizer.apply(tape.gradient(loss, variables), variables)
        return loss

    for _ in range(300):
        loss = train_step()
    assert float(loss) < 0.1
    decoded = _np(crf.decode(head(features), mask))
    argmax = _np(keras.ops.argmax(head(features), axis=-1))
    assert np.mean(decoded[mask] == tags[mask]) == 1.0
    later = mask.copy()
    later[:, 0] = False
    assert np.mean(argmax[later] == tags[later]) < 0.8


def test_float16_potentials_decode_in_float32():
    crf = _random_crf(3, seed=16)
    potentials, tags, mask = _random_case(3, 4, 3, seed=17)
    half = tf.constant(potentials.astype("float16"))
    expected = crf.decode(half.numpy().astype("float32"), mask)
    np.testing.assert_array_equal(_np(crf.decode(half, mask)), _np(expected))
    assert crf.log_likelihood(half, tags, mask).dtype == tf.float32


def test_saved_model_decode_equals_in_process(tmp_path):
    """The Viterbi decode served from a SavedModel gives the in-process tags."""
    inputs = keras.Input((None, 4))
    crf = LinearChainCRF(5, transitions_initializer="random_normal", name="crf",
                         **iob2_allowed_transitions(["B-X", "B-Y", "I-X", "I-Y", "O"]))
    model = keras.Model(inputs, crf(keras.layers.Dense(5)(inputs)))

    def tag(features, mask):
        return crf.decode(model(features), mask)

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", tag, input_signature=[
        tf.TensorSpec([None, None, 4], tf.float32), tf.TensorSpec([None, None], tf.bool)])
    archive.write_out(str(tmp_path / "saved"), verbose=False)
    served = tf.saved_model.load(str(tmp_path / "saved"))
    rng = np.random.default_rng(18)
    for length in (1, 7):
        features = rng.normal(size=(3, length, 4)).astype("float32")
        mask = np.arange(length)[None, :] < np.array([length, 1, 0])[:, None]
        np.testing.assert_array_equal(_np(served.serving_default(features, mask)),
                                      _np(tag(features, mask)))


def test_scores_stay_float32_inside_a_mixed_precision_call():
    """Called from a mixed_float16 layer's call (an autocast scope), the transitions are
    not cast to float16."""
    crf = _random_crf(3, seed=19)
    crf.set_weights([w + 1e-3 / 3 for w in crf.get_weights()])  # not float16-representable
    potentials, tags, mask = _random_case(3, 4, 3, seed=20)

    class Caller(keras.layers.Layer):
        def call(self, x):
            return crf.log_likelihood(x, tags, mask), crf._scores()[0]

    _, transitions = Caller(dtype="mixed_float16")(potentials)
    assert transitions.dtype == tf.float32
    np.testing.assert_array_equal(_np(transitions), _np(crf.transitions))


def test_mirrored_strategy_replicas_agree_with_one_device():
    """Created in a MirroredStrategy scope (two logical CPUs), every replica gets the
    one-device log-likelihood, gradients and decode."""
    crf = _random_crf(3, seed=21)
    potentials, tags, mask = _random_case(4, 4, 3, seed=22)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        mirrored = LinearChainCRF(3)
        mirrored.build((None, None, 3))
    mirrored.set_weights(crf.get_weights())

    def losses(layer):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer.negative_log_likelihood(potentials, tags, mask))
        return loss, tape.gradient(loss, layer.trainable_variables), layer.decode(potentials, mask)

    expected = losses(crf)
    per_replica = strategy.run(tf.function(lambda: losses(mirrored)))
    for local in strategy.experimental_local_results(per_replica):
        for a, b in zip(keras.tree.flatten(local), keras.tree.flatten(expected)):
            np.testing.assert_allclose(_np(a), _np(b), rtol=1e-5, atol=1e-5)
