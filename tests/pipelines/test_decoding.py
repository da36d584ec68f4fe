"""Greedy and beam search: hand-computed toy cases, end/pad handling, length penalty,
tf.function / XLA / SavedModel, cached equals uncached on a Transformer decoder from
our layers, an LSTM state, and beam search against exhaustive search."""
import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

from layers import LSTMCell, TokenAndPositionEmbedding, TransformerDecoderBlock
from pipelines.decoding import _beam_search, beam_search, decode, greedy_search

# Toy vocabulary. PAD2 is a second filler, to check that pad_id is honoured.
PAD, START, END, A, B, C, PAD2 = range(7)
V = 7
IMPOSSIBLE = -20.0  # logit of a transition that a table leaves out (p ~ 2e-9)

# Greedy takes A (0.5) then END (0.4): P = 0.20. Beam finds B (0.4), END (0.9): P = 0.36.
GREEDY_IS_WRONG = {
    START: {A: 0.5, B: 0.4, C: 0.1},
    A: {END: 0.4, B: 0.3, C: 0.3},
    B: {END: 0.9, C: 0.1},
    C: {END: 1.0},
}
# Short: [END] with P = 0.55. Long: [A, B, C, END] with P = 0.45.
# Normalised (lp(1) = 1, lp(4) = 1.5 ** alpha):
#   alpha = 0:   short -0.598 > long -0.799
#   alpha = 0.6: short -0.598 > long -0.799 / 1.275 = -0.627
#   alpha = 1:   short -0.598 < long -0.799 / 1.5   = -0.533
SHORT_OR_LONG = {
    START: {END: 0.55, A: 0.45},
    A: {B: 1.0},
    B: {C: 1.0},
    C: {END: 1.0},
}


def table_logits(transitions):
    """(V, V) logits: row t holds log P(next | t); rows left out are uniform."""
    logits = np.zeros((V, V), "float32")
    for token, row in transitions.items():
        logits[token] = IMPOSSIBLE
        for next_token, p in row.items():
            logits[token, next_token] = np.log(p)
    return logits


def table_step(transitions):
    """A step function whose logits depend on the last token only, plus a per-row
    bias `(N, V)` kept in the state (so the state must be tiled and reordered)."""
    table = tf.constant(table_logits(transitions))

    def step_fn(token_ids, state, index):
        logits = tf.gather(table, token_ids) + state["bias"]  # (N, V)
        return logits, {"bias": state["bias"], "steps": state["steps"] + 1}

    return step_fn


def toy_state(batch_size, bias=None):
    bias = np.zeros((batch_size, V), "float32") if bias is None else bias
    return {"bias": tf.convert_to_tensor(bias), "steps": tf.zeros([batch_size], tf.int32)}


def log_prob(transitions, tokens, start=START):
    """Total log-probability of `tokens` up to and including END, from the table."""
    logits = table_logits(transitions)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    total, previous = 0.0, start
    for token in tokens:
        total += log_probs[previous, token]
        if token == END:
            break
        previous = token
    return total


def starts(*ids):
    return tf.constant(ids, tf.int32)


# --- toy transition tables --------------------------------------------------------------


def test_greedy_takes_the_argmax_path():
    step_fn = table_step(GREEDY_IS_WRONG)
    tokens = greedy_search(step_fn, toy_state(1), starts(START), max_length=4, end_id=END)
    np.testing.assert_array_equal(tokens, [[A, END, PAD, PAD]])


def test_beam_search_beats_greedy_where_greedy_is_wrong():
    step_fn = table_step(GREEDY_IS_WRONG)
    greedy = greedy_search(step_fn, toy_state(1), starts(START), 4, END)
    tokens, scores = beam_search(
        step_fn, toy_state(1), starts(START), 4, END, beam_size=2, length_penalty=0.0
    )
    np.testing.assert_array_equal(tokens, [[B, END, PAD, PAD]])
    np.testing.assert_allclose(scores, [np.log(0.36)], atol=1e-5)
    beam_total = log_prob(GREEDY_IS_WRONG, tokens.numpy()[0])
    greedy_total = log_prob(GREEDY_IS_WRONG, greedy.numpy()[0])
    np.testing.assert_allclose([greedy_total, beam_total], np.log([0.2, 0.36]), atol=1e-5)
    assert beam_total > greedy_total


def test_beam_size_one_equals_greedy():
    # A random table with a rare END, batch 4, different start tokens and biases.
    rng = np.random.default_rng(1)
    table = tf.constant(rng.normal(size=(V, V)).astype("float32"))

    def step_fn(token_ids, state, index):
        return tf.gather(table, token_ids) + state, state

    bias = tf.constant(rng.normal(size=(4, V)).astype("float32"))
    start_ids = starts(START, A, B, C)
    greedy = greedy_search(step_fn, bias, start_ids, 10, END)
    tokens, _ = beam_search(step_fn, bias, start_ids, 10, END, beam_size=1)
    np.testing.assert_array_equal(tokens, greedy)
    np.testing.assert_array_equal(decode(step_fn, bias, start_ids, 10, END), greedy)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_low_precision_logits_are_scored_in_float32(dtype):
    step_fn = table_step(GREEDY_IS_WRONG)

    def low_precision_step(token_ids, state, index):
        logits, state = step_fn(token_ids, state, index)
        return tf.cast(logits, dtype), state

    greedy = greedy_search(low_precision_step, toy_state(1), starts(START), 4, END)
    tokens, scores = beam_search(low_precision_step, toy_state(1), starts(START), 4, END, 2, 0.0)
    np.testing.assert_array_equal(greedy, [[A, END, PAD, PAD]])
    np.testing.assert_array_equal(tokens, [[B, END, PAD, PAD]])
    assert scores.dtype == tf.float32
    np.testing.assert_allclose(scores, [np.log(0.36)], atol=1e-2)


def test_end_is_kept_then_pad_follows():
    transitions = {START: {A: 0.6, END: 0.4}, A: {A: 0.7, END: 0.3}, END: {A: 1.0}}
    step_fn = table_step(transitions)
    # Row 0 loops on A (END never wins), row 1 starts at END whose table row says A:
    # the search must pad after END whatever the model says.
    start_ids = starts(START, A)
    bias = np.zeros((2, V), "float32")
    bias[1, END] = 5.0  # row 1: END at once
    tokens = greedy_search(step_fn, toy_state(2, bias), start_ids, 4, END, pad_id=PAD2)
    np.testing.assert_array_equal(tokens, [[A, A, A, A], [END, PAD2, PAD2, PAD2]])
    tokens, _ = beam_search(step_fn, toy_state(2, bias), start_ids, 4, END, 3, pad_id=PAD2)
    assert tokens.numpy()[1].tolist() == [END, PAD2, PAD2, PAD2]


def test_every_beam_stays_finished_and_beams_are_sorted():
    step_fn = table_step(GREEDY_IS_WRONG)
    sequences, scores = _beam_search(step_fn, toy_state(1), starts(START), 5, END, 3, 0.6, PAD)
    sequences, scores = sequences.numpy()[0], scores.numpy()[0]  # (K, L), (K,)
    for beam in sequences:
        assert END in beam.tolist()
        end_at = beam.tolist().index(END)
        assert (beam[end_at + 1 :] == PAD).all()
    assert (np.diff(scores) <= 0).all()
    lengths = [beam.tolist().index(END) + 1 for beam in sequences]
    expected = [
        log_prob(GREEDY_IS_WRONG, beam) / ((5 + length) / 6) ** 0.6
        for beam, length in zip(sequences, lengths)
    ]
    np.testing.assert_allclose(scores, expected, atol=1e-5)


@pytest.mark.parametrize(
    "length_penalty, expected_tokens, expected_score",
    [
        (0.0, [END, PAD, PAD, PAD, PAD], np.log(0.55)),
        (0.6, [END, PAD, PAD, PAD, PAD], np.log(0.55)),
        (1.0, [A, B, C, END, PAD], np.log(0.45) / 1.5),
    ],
)
def test_length_penalty_chooses_between_short_and_long(
    length_penalty, expected_tokens, expected_score
):
    step_fn = table_step(SHORT_OR_LONG)
    tokens, scores = beam_search(
        step_fn, toy_state(1), starts(START), 5, END, beam_size=2, length_penalty=length_penalty
    )
    np.testing.assert_array_equal(tokens, [expected_tokens])
    np.testing.assert_allclose(scores, [expected_score], atol=1e-5)


# --- early exit ---------------------------------------------------------------------------


def counting_step(transitions):
    """`table_step` that also counts its calls in a variable (eagerly and in a graph)."""
    step_fn, calls = table_step(transitions), tf.Variable(0)

    def counted(token_ids, state, index):
        calls.assign_add(1)
        return step_fn(token_ids, state, index)

    return counted, calls


@pytest.mark.parametrize("jit_compile", [None, False, True])
def test_early_exit_gives_the_tokens_of_all_steps(jit_compile):
    # Greedy ends every row of BATCH_* by step 2 of 8, beam search every beam by step 3 (row 2's
    # second beam is A C END): early exit runs 2 and 3 steps, the full loop 8, and the tokens,
    # scores and padded (B, max_length) shapes agree.
    max_length, results, steps = 8, {}, {}
    for early_exit in (True, False):
        (greedy_fn, greedy_calls), (beam_fn, beam_calls), (sample_fn, sample_calls) = [
            counting_step(GREEDY_IS_WRONG) for _ in range(3)]

        def searches(start_ids, bias):
            state = toy_state(3, bias)
            return (greedy_search(greedy_fn, state, start_ids, max_length, END,
                                  early_exit=early_exit),
                    *beam_search(beam_fn, state, start_ids, max_length, END, 2, 0.6,
                                 early_exit=early_exit),
                    decode(sample_fn, state, start_ids, max_length, END, strategy="top_k",
                           top_k=2, seed=3, early_exit=early_exit))

        run = searches if jit_compile is None else tf.function(searches, jit_compile=jit_compile)
        results[early_exit] = [t.numpy() for t in run(starts(*BATCH_STARTS),
                                                      tf.constant(BATCH_BIAS))]
        steps[early_exit] = [int(c.numpy()) for c in (greedy_calls, beam_calls, sample_calls)]
    greedy, beam, scores, sampled = results[True]
    assert greedy.shape == beam.shape == sampled.shape == (3, max_length)
    np.testing.assert_array_equal(greedy[:, :4], EXPECTED_GREEDY)
    np.testing.assert_array_equal(beam[:, :4], EXPECTED_BEAM)
    assert (greedy[:, 4:] == PAD).all() and (beam[:, 4:] == PAD).all()
    # Sampling stops at the step after which every row holds END (the longest row's length).
    last_end = max(row.tolist().index(END) + 1 for row in sampled)
    assert steps == {True: [2, 3, last_end], False: [max_length] * 3}
    assert last_end < max_length
    for early, full in zip(results[True], results[False]):
        np.testing.assert_array_equal(early, full)


def test_full_length_when_a_row_never_ends():
    # Row 0 loops on A: early exit cannot stop before max_length, and both runs agree.
    transitions = {START: {A: 1.0}, A: {A: 0.9, END: 0.1}, C: {END: 1.0}}
    for early_exit in (True, False):
        step_fn, calls = counting_step(transitions)
        tokens, _ = beam_search(step_fn, toy_state(2), starts(START, C), 5, END, 2,
                                early_exit=early_exit)
        np.testing.assert_array_equal(tokens, [[A] * 5, [END] + [PAD] * 4])
        assert calls.numpy() == 5


# --- tf.function, XLA, SavedModel ---------------------------------------------------------

# Three rows with different outcomes: row 1 starts at B, row 2 is biased towards C.
BATCH_STARTS = (START, B, START)
BATCH_BIAS = np.zeros((3, V), "float32")
BATCH_BIAS[2, C] = 5.0
EXPECTED_GREEDY = [[A, END, PAD, PAD], [END, PAD, PAD, PAD], [C, END, PAD, PAD]]
EXPECTED_BEAM = [[B, END, PAD, PAD], [END, PAD, PAD, PAD], [C, END, PAD, PAD]]


@pytest.mark.parametrize("jit_compile", [False, True])
def test_tf_function_with_batch(jit_compile):
    step_fn = table_step(GREEDY_IS_WRONG)

    @tf.function(jit_compile=jit_compile)
    def greedy(start_ids, bias):
        return greedy_search(step_fn, toy_state(3, bias), start_ids, 4, END)

    @tf.function(jit_compile=jit_compile)
    def beam(start_ids, bias):
        return beam_search(step_fn, toy_state(3, bias), start_ids, 4, END, 2, 0.0)

    start_ids, bias = starts(*BATCH_STARTS), tf.constant(BATCH_BIAS)
    np.testing.assert_array_equal(greedy(start_ids, bias), EXPECTED_GREEDY)
    np.testing.assert_array_equal(beam(start_ids, bias)[0], EXPECTED_BEAM)


def test_saved_model_signature_with_unknown_batch(tmp_path):
    step_fn = table_step(GREEDY_IS_WRONG)

    class Decoder(tf.Module):
        @tf.function(
            input_signature=[
                tf.TensorSpec([None], tf.int32, name="start_ids"),
                tf.TensorSpec([None, V], tf.float32, name="bias"),
            ]
        )
        def serve(self, start_ids, bias):
            state = {"bias": bias, "steps": tf.zeros_like(start_ids)}
            tokens, scores = beam_search(step_fn, state, start_ids, 4, END, 2, 0.0)
            return {"greedy": greedy_search(step_fn, state, start_ids, 4, END), "beam": tokens}

    tf.saved_model.save(Decoder(), str(tmp_path))
    serve = tf.saved_model.load(str(tmp_path)).signatures["serving_default"]
    outputs = serve(start_ids=starts(*BATCH_STARTS), bias=tf.constant(BATCH_BIAS))
    np.testing.assert_array_equal(outputs["greedy"], EXPECTED_GREEDY)
    np.testing.assert_array_equal(outputs["beam"], EXPECTED_BEAM)


# --- a Transformer decoder from our layers: cached equals uncached ----------------------

MAX_LENGTH, VOCAB, HIDDEN, HEADS, SOURCE_LENGTH = 12, 11, 16, 2, 5


def tiny_decoder(seed=0):
    keras.utils.set_random_seed(seed)
    embedding = TokenAndPositionEmbedding(VOCAB, MAX_LENGTH, HIDDEN, mask_zero=False)
    blocks = [
        TransformerDecoderBlock(HIDDEN, HEADS, 2 * HIDDEN, name=f"block_{i}") for i in range(2)
    ]
    head = keras.layers.Dense(VOCAB)
    # Build the weights eagerly, before any tf.function traces the step functions.
    _, uncached = transformer_states(1)
    uncached_step(embedding, blocks, head)(starts(START), uncached, tf.constant(0))
    return embedding, blocks, head


def cached_step(embedding, blocks, head):
    """Feeds only the new token; `state` keeps one key/value cache per block."""

    def step_fn(token_ids, state, index):
        x = embedding(token_ids[:, None], start_index=index)  # (N, 1, D)
        caches = []
        for block, cache in zip(blocks, state["caches"]):
            x, cache = block(
                x,
                encoder_outputs=state["memory"],
                encoder_padding_mask=state["memory_mask"],
                self_attention_cache=cache,
                self_attention_cache_index=index,
            )  # (N, 1, D), (N, 2, S_max, H, D / H)
            caches.append(cache)
        return head(x[:, 0]), dict(state, caches=caches)  # (N, V)

    return step_fn


def uncached_step(embedding, blocks, head):
    """Recomputes the whole prefix; `state` keeps the tokens so far `(N, S_max)`."""

    def step_fn(token_ids, state, index):
        tokens = state["tokens"]
        tokens = tf.where(tf.range(MAX_LENGTH) == index, token_ids[:, None], tokens)
        x = embedding(tokens)  # (N, S_max, D); later positions are hidden by the causal mask
        for block in blocks:
            x = block(
                x, encoder_outputs=state["memory"], encoder_padding_mask=state["memory_mask"]
            )
        logits = head(tf.gather(x, index, axis=1))  # (N, V)
        return logits, dict(state, tokens=tokens)

    return step_fn


def transformer_states(batch_size):
    rng = np.random.default_rng(2)
    memory = tf.constant(rng.normal(size=(batch_size, SOURCE_LENGTH, HIDDEN)).astype("float32"))
    lengths = np.arange(batch_size) % SOURCE_LENGTH + 1
    memory_mask = tf.constant(np.arange(SOURCE_LENGTH)[None] < lengths[:, None])
    cache = tf.zeros([batch_size, 2, MAX_LENGTH, HEADS, HIDDEN // HEADS])
    cached = {"memory": memory, "memory_mask": memory_mask, "caches": [cache, cache]}
    tokens = tf.zeros([batch_size, MAX_LENGTH], tf.int32)
    uncached = {"memory": memory, "memory_mask": memory_mask, "tokens": tokens}
    return cached, uncached


def test_cached_equals_uncached_transformer():
    model = tiny_decoder()
    cached_state, uncached_state = transformer_states(3)
    start_ids = starts(START, START, START)
    # With this seed, token 9 ends greedy rows 1 and 2 at different steps, never row 0.
    end_id = 9
    outputs = {}
    for name, step_fn, state in (
        ("cached", cached_step(*model), cached_state),
        ("uncached", uncached_step(*model), uncached_state),
    ):
        greedy = tf.function(greedy_search)(step_fn, state, start_ids, MAX_LENGTH, end_id)
        tokens, scores = tf.function(beam_search)(
            step_fn, state, start_ids, MAX_LENGTH, end_id, beam_size=3, length_penalty=0.6
        )
        outputs[name] = greedy.numpy(), tokens.numpy(), scores.numpy()

    greedy, tokens, scores = outputs["cached"]
    np.testing.assert_array_equal(greedy, outputs["uncached"][0])
    np.testing.assert_array_equal(tokens, outputs["uncached"][1])
    np.testing.assert_allclose(scores, outputs["uncached"][2], atol=1e-4)
    assert [end_id in row for row in greedy.tolist()] == [False, True, True]
    assert not np.array_equal(tokens, greedy)  # beam search finds other outputs here

    beam_one, _ = tf.function(beam_search)(
        cached_step(*model), cached_state, start_ids, MAX_LENGTH, end_id, beam_size=1
    )
    np.testing.assert_array_equal(beam_one, greedy)


# --- an RNN state, and beam search against exhaustive search ----------------------------

RNN_VOCAB, RNN_UNITS = 5, 8


def lstm_step(seed=0):
    keras.utils.set_random_seed(seed)
    embedding = keras.layers.Embedding(RNN_VOCAB, RNN_UNITS)
    cell = LSTMCell(RNN_UNITS)
    head = keras.layers.Dense(RNN_VOCAB)

    def step_fn(token_ids, state, index):
        h, state = cell(embedding(token_ids), state)  # (N, U), [h, c]
        return 3.0 * head(h), list(state)  # sharper logits: END wins sometimes

    return step_fn


def lstm_state(batch_size):
    rng = np.random.default_rng(3)
    return [tf.constant(rng.normal(size=(batch_size, RNN_UNITS)).astype("float32"))] * 2


def exhaustive_search(step_fn, state, start_ids, max_length, end_id, length_penalty, pad_id=0):
    """Scores every output sequence (END then padding, or no END) of every row."""
    sequences = [
        s
        for s in itertools.product(range(RNN_VOCAB), repeat=max_length)
        if end_id not in s[:-1] or all(t == pad_id for t in s[s.index(end_id) + 1 :])
    ]
    batch_size, n = len(start_ids), len(sequences)
    candidates = np.array(sequences, "int32")  # (n, L)
    state = [tf.repeat(s, n, axis=0) for s in state]  # (B*n, U)
    token_ids = np.repeat(start_ids, n)
    totals = np.zeros(batch_size * n)
    lengths = np.full(batch_size * n, max_length)
    finished = np.zeros(batch_size * n, bool)
    for index in range(max_length):
        logits, state = step_fn(tf.constant(token_ids), state, tf.constant(index))
        log_probs = tf.nn.log_softmax(logits).numpy()
        token_ids = np.tile(candidates[:, index], batch_size)
        totals += np.where(finished, 0.0, log_probs[np.arange(len(token_ids)), token_ids])
        lengths = np.where(~finished & (token_ids == end_id), index + 1, lengths)
        finished |= token_ids == end_id
    scores = (totals / ((5 + lengths) / 6) ** length_penalty).reshape(batch_size, n)
    best = scores.argmax(-1)
    return candidates[best], scores[np.arange(batch_size), best]


def test_lstm_state_beam_equals_exhaustive_search():
    step_fn, state = lstm_step(), lstm_state(2)
    start_ids, max_length, end_id = np.array([1, 4], "int32"), 3, 2
    # Keeping V ** (L - 1) beams never prunes a prefix that could still win.
    tokens, scores = tf.function(beam_search)(
        step_fn, state, start_ids, max_length, end_id, RNN_VOCAB ** (max_length - 1), 0.6
    )
    expected_tokens, expected_scores = exhaustive_search(
        step_fn, state, start_ids, max_length, end_id, 0.6
    )
    np.testing.assert_array_equal(tokens, expected_tokens)
    np.testing.assert_allclose(scores, expected_scores, atol=1e-5)

    greedy = greedy_search(step_fn, state, start_ids, 8, end_id)
    np.testing.assert_array_equal(beam_search(step_fn, state, start_ids, 8, end_id, 1)[0], greedy)
    beam, _ = beam_search(step_fn, state, start_ids, 8, end_id, beam_size=3)
    np.testing.assert_array_equal(decode(step_fn, state, start_ids, 8, end_id, beam_size=3), beam)


# --- errors ---------------------------------------------------------------------------------


def test_errors_name_the_argument():
    step_fn = table_step(GREEDY_IS_WRONG)
    with pytest.raises(ValueError, match="max_length must be a Python int >= 1; received max_le"):
        greedy_search(step_fn, toy_state(1), starts(START), 0, END)
    with pytest.raises(ValueError, match="beam_size must be an int >= 1; received beam_size=0"):
        beam_search(step_fn, toy_state(1), starts(START), 4, END, beam_size=0)
    with pytest.raises(ValueError, match="length_penalty must be >= 0"):
        beam_search(step_fn, toy_state(1), starts(START), 4, END, length_penalty=-1.0)

    def bad_step(token_ids, state, index):
        return tf.zeros([1, V]), tf.concat([state, state], axis=1)

    with pytest.raises(ValueError, match="step_fn must return a state with the shapes"):
        greedy_search(bad_step, tf.zeros([1, 2]), starts(START), 4, END)
