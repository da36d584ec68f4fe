"""Greedy, beam and sampling search over a step function with a cache.

A model decodes through a *step function*:

    step_fn(token_ids, state, index) -> (logits, new_state)

- `token_ids`: int32 `(N,)`, the tokens at position `index` of the output
  sequence (`index = 0` for the start token).
- `state`: a nested structure (dict, list, tuple) of tensors, each with leading
  dimension N: key/value caches, RNN states, encoder outputs and masks, or the
  tokens so far for a model that recomputes the whole prefix.
- `index`: scalar int32 tensor, the position of `token_ids`.
- `logits`: float `(N, V)`, the scores of the token at position `index + 1`;
  `new_state` has the structure and shapes of `state`.

Both searches are pure TensorFlow: one `tf.while_loop` over a static
`max_length`, which stops early once every sequence (every beam) has produced
`end_id` (`early_exit=False` runs all steps, for the same tokens); the output
stays `(B, max_length)`, padded with `pad_id`. They
run eagerly, inside `tf.function` (also with `jit_compile=True`) and inside an
exported SavedModel signature. Logits are log-softmaxed in float32, so models
may run in mixed precision.

Beam search keeps `K = beam_size` hypotheses per batch row. The state is tiled
to `B * K` rows, beam-major inside each batch row (row `b`'s beams are rows
`b * K ... b * K + K - 1`), and reordered with `tf.gather` along axis 0 after
every step. A finished hypothesis (one that produced `end_id`) stays in the beam:
it extends only with `pad_id` and its score is frozen. Hypotheses are ranked by
their length-normalised log-probability `log P / lp(length)`, with the GNMT
length penalty `lp(length) = ((5 + length) / 6) ** length_penalty`, where
`length` counts the output tokens up to and including `end_id` (Wu et al.,
2016, section 7; `length_penalty=0` means none). Each step takes the top K tokens
of every beam and then the top K of those K * K candidates, which is the top K
of all K * V candidates, for less work.

Sampling (`sample_search`) draws every token from the model's distribution,
scaled by a `temperature` (`softmax(log p / temperature)`; 0 means greedy) and
restricted by the strategy: `random` (the whole vocabulary), `top_k` (the `k`
most probable tokens; Fan et al., 2018) or `top_p` (nucleus: the smallest set
of most probable tokens whose mass reaches `p`; Holtzman et al., 2020). Draws
are stateless, seeded by `(seed, index)`: the same inputs and seed give the
same tokens, eagerly, in a `tf.function` and in an exported SavedModel.

Every search takes optional `forced_ids` `(B, max_length)`: where an entry is
`>= 0` the output token at that position is that id whatever the model says
(a language model's prompt, and an `end_id` that caps its continuation), -1
leaves the choice to the search. The forced tokens still run through `step_fn`,
so they fill the cache as a prompt should.

References:
    Fan et al., 2018, "Hierarchical Neural Story Generation",
    https://arxiv.org/abs/1805.04833 (top-k sampling).
    Holtzman et al., 2020, "The Curious Case of Neural Text Degeneration",
    https://arxiv.org/abs/1904.09751 (nucleus sampling).
    Wu et al., 2016, "Google's Neural Machine Translation System",
    https://arxiv.org/abs/1609.08144 (length penalty).
    keras-hub `BeamSampler`/`GreedySampler`; TF Model Garden
    `official/nlp/modeling/ops/beam_search.py`.
"""
from typing import Any, Callable, Optional

import tensorflow as tf

StepFn = Callable[[tf.Tensor, Any, tf.Tensor], tuple[tf.Tensor, Any]]

# `decode.strategy`: the two searches and the three samplers (keras-hub's sampler names).
STRATEGIES = ("greedy", "beam", "random", "top_k", "top_p")
SAMPLERS = ("random", "top_k", "top_p")

# The score of impossible candidates: finite, so that sums and divisions stay NaN-free.
_NEG_INF = -1e9


def greedy_search(
    step_fn: StepFn,
    state: Any,
    start_ids: tf.Tensor,
    max_length: int,
    end_id: int,
    pad_id: int = 0,
    forced_ids: Optional[tf.Tensor] = None,
    early_exit: bool = True,
) -> tf.Tensor:
    """Decodes by taking the most probable token at every step.

    Args:
        step_fn: the model's step function (see the module docstring).
        state: nested structure of tensors with leading dimension B.
        start_ids: int `(B,)`, the start token of every sequence.
        max_length: Python int, the number of output tokens.
        end_id: int, the end token; it is kept in the output, and every later
            position is `pad_id`.
        pad_id: int, filler after `end_id`; also fed to `step_fn` for finished
            rows. Defaults to `0`.
        forced_ids: optional int `(B, max_length)`, tokens forced at the
            positions where they are `>= 0` (see the module docstring).
        early_exit: bool; True (the default) stops once every row has produced
            `end_id`, False runs all `max_length` steps (the same tokens; for
            benchmarks that time the full length).

    Returns:
        int32 `(B, max_length)`, the output tokens without the start token.

    Example:
    ```python
    tokens = greedy_search(step_fn, {"cache": cache}, start_ids, max_length=32, end_id=2)
    ```
    """

    def choose(log_probs, index):
        # top_k rather than argmax: the same op and tie-breaking as beam_search.
        return tf.math.top_k(log_probs, k=1)[1][:, 0]  # (B,)

    return _pick_loop(step_fn, state, start_ids, max_length, end_id, pad_id, choose, forced_ids,
                      early_exit)


def sample_search(
    step_fn: StepFn,
    state: Any,
    start_ids: tf.Tensor,
    max_length: int,
    end_id: int,
    strategy: str = "top_k",
    top_k: int = 40,
    top_p: float = 0.9,
    temperature: float = 1.0,
    seed: int = 0,
    pad_id: int = 0,
    forced_ids: Optional[tf.Tensor] = None,
    early_exit: bool = True,
) -> tf.Tensor:
    """Decodes by drawing every token from the model's (filtered) distribution.

    Args:
        step_fn, state, start_ids, max_length, end_id, pad_id, forced_ids,
            early_exit: as in `greedy_search`.
        strategy: `"random"` (every token), `"top_k"` (the `top_k` most probable)
            or `"top_p"` (the smallest set of most probable tokens whose
            probability reaches `top_p`, after the temperature). Defaults to
            `"top_k"`.
        top_k: Python int >= 1, used by `"top_k"`; more than the vocabulary means
            all of it. Defaults to `40`.
        top_p: float in `(0, 1]`, used by `"top_p"`. Defaults to `0.9`.
        temperature: float >= 0; the log-probabilities are divided by it before
            filtering and drawing. `0` is greedy search. Defaults to `1.0`.
        seed: Python int; draw `index` uses the stateless seed `(seed, index)`.
            Defaults to `0`.

    Returns:
        int32 `(B, max_length)`, the output tokens without the start token.

    Example:
    ```python
    tokens = sample_search(step_fn, state, start_ids, 32, end_id=3, strategy="top_p", top_p=0.9)
    ```
    """
    check_sampling(strategy, top_k, top_p, temperature)
    if temperature == 0:
        return greedy_search(step_fn, state, start_ids, max_length, end_id, pad_id, forced_ids,
                             early_exit)

    def choose(log_probs, index):
        scaled = log_probs / temperature  # (B, V); softmax(scaled) = p^(1/T), renormalised
        seeds = tf.stack([tf.constant(seed, tf.int32), tf.cast(index, tf.int32)])
        if strategy == "random":
            return tf.cast(tf.random.stateless_categorical(scaled, 1, seeds)[:, 0], tf.int32)
        vocab_size = scaled.shape[-1] or tf.shape(scaled)[-1]
        k = vocab_size if strategy == "top_p" else top_k
        if isinstance(k, int) and isinstance(vocab_size, int):
            k = min(k, vocab_size)
        else:
            k = tf.minimum(k, vocab_size)
        values, ids = tf.math.top_k(scaled, k=k)  # (B, k), most probable first
        if strategy == "top_p":
            # Token i stays while the mass of the tokens before it is < p: the smallest
            # prefix whose mass reaches p (the most probable token always stays).
            before = tf.math.cumsum(tf.nn.softmax(values), axis=-1, exclusive=True)
            values = tf.where(before < top_p, values, _NEG_INF)
        draw = tf.random.stateless_categorical(values, 1, seeds)  # (B, 1) into the k
        return tf.gather(ids, tf.cast(draw, tf.int32), batch_dims=1)[:, 0]  # (B,)

    return _pick_loop(step_fn, state, start_ids, max_length, end_id, pad_id, choose, forced_ids,
                      early_exit)


def check_sampling(strategy, top_k, top_p, temperature) -> None:
    """Raises ValueError, naming the setting, for a sampler that cannot draw."""
    if strategy not in SAMPLERS:
        raise ValueError(f"strategy must be one of {SAMPLERS} for sampling; "
                         f"received strategy={strategy!r}")
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
        raise ValueError(f"top_k must be an int >= 1; received top_k={top_k!r}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1]; received top_p={top_p!r}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0; received temperature={temperature!r}")


def _pick_loop(step_fn, state, start_ids, max_length, end_id, pad_id, choose, forced_ids,
               early_exit=True):
    """The loop of greedy search and sampling: `choose(log_probs (B, V), index)` -> (B,)
    picks every row's next token; forced tokens override it."""
    _check_max_length(max_length)
    start_ids = tf.cast(start_ids, tf.int32)  # (B,)
    batch_size = tf.shape(start_ids)[0]
    positions = tf.range(max_length)  # (L,)

    def body(index, token_ids, state, tokens, finished):
        logits, state = step_fn(token_ids, state, index)
        log_probs = tf.nn.log_softmax(tf.cast(logits, tf.float32))  # (B, V)
        next_ids = tf.cast(choose(log_probs, index), tf.int32)  # (B,)
        if forced_ids is not None:
            forced = tf.gather(forced_ids, index, axis=1)  # (B,)
            next_ids = tf.where(forced >= 0, forced, next_ids)
        next_ids = tf.where(finished, pad_id, next_ids)  # (B,)
        tokens = tf.where(positions[None] == index, next_ids[:, None], tokens)  # (B, L)
        finished = finished | (next_ids == end_id)
        return index + 1, next_ids, state, tokens, finished

    def cond(index, token_ids, state, tokens, finished):
        return ~tf.reduce_all(finished) if early_exit else tf.constant(True)

    if forced_ids is not None:
        forced_ids = _check_forced(forced_ids, max_length)
    tokens = tf.fill([batch_size, max_length], tf.constant(pad_id, tf.int32))  # (B, L)
    finished = tf.zeros([batch_size], tf.bool)  # (B,)
    _, _, _, tokens, _ = _while_loop(
        cond, body, (tf.constant(0), start_ids, state, tokens, finished), max_length
    )
    return tokens


def _check_forced(forced_ids, max_length):
    forced_ids = tf.cast(forced_ids, tf.int32)
    if forced_ids.shape.rank != 2 or forced_ids.shape[1] not in (None, max_length):
        raise ValueError(
            f"forced_ids must have shape (B, max_length={max_length}); received shape "
            f"{forced_ids.shape}"
        )
    return forced_ids


def beam_search(
    step_fn: StepFn,
    state: Any,
    start_ids: tf.Tensor,
    max_length: int,
    end_id: int,
    beam_size: int = 4,
    length_penalty: float = 0.6,
    pad_id: int = 0,
    forced_ids: Optional[tf.Tensor] = None,
    early_exit: bool = True,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Decodes with beam search and returns the best hypothesis of every row.

    Args:
        step_fn: the model's step function (see the module docstring); it is
            called with `N = B * beam_size` rows.
        state: nested structure of tensors with leading dimension B; every
            tensor is tiled to `B * beam_size` rows.
        start_ids: int `(B,)`, the start token of every sequence.
        max_length: Python int, the number of output tokens.
        end_id: int, the end token; it is kept in the output, and every later
            position is `pad_id`.
        beam_size: Python int K >= 1, the number of hypotheses per row. With 1,
            the tokens equal `greedy_search`'s. Defaults to `4`.
        length_penalty: float alpha >= 0 of the GNMT penalty
            `((5 + length) / 6) ** alpha`; 0 ranks by raw log-probability,
            larger values favour longer outputs. Defaults to `0.6`.
        pad_id: int, filler after `end_id`. Defaults to `0`.
        forced_ids: optional int `(B, max_length)`, tokens forced at the
            positions where they are `>= 0`, in every beam (see the module
            docstring); they count in the score and the length.
        early_exit: bool; True (the default) stops once every beam of every row
            has produced `end_id`, False runs all `max_length` steps (the same
            tokens and scores).

    Returns:
        `(tokens, scores)`: int32 `(B, max_length)`, the best hypothesis without
        the start token, and float32 `(B,)`, its log-probability divided by the
        length penalty. A hypothesis that never produced `end_id` counts
        `max_length` tokens.

    Example:
    ```python
    tokens, scores = beam_search(step_fn, state, start_ids, max_length=32, end_id=2)
    ```
    """
    sequences, scores = _beam_search(
        step_fn, state, start_ids, max_length, end_id, beam_size, length_penalty, pad_id,
        forced_ids, early_exit,
    )
    return sequences[:, 0], scores[:, 0]


def decode(
    step_fn: StepFn,
    state: Any,
    start_ids: tf.Tensor,
    max_length: int,
    end_id: int,
    beam_size: int = 1,
    length_penalty: float = 0.6,
    pad_id: int = 0,
    strategy: Optional[str] = None,
    top_k: int = 40,
    top_p: float = 0.9,
    temperature: float = 1.0,
    seed: int = 0,
    forced_ids: Optional[tf.Tensor] = None,
    early_exit: bool = True,
) -> tf.Tensor:
    """The search `strategy` names (`STRATEGIES`): `"greedy"`, `"beam"` (greedy when
    `beam_size == 1`) or one of the samplers of `sample_search`. `None` (the default) is
    greedy search when `beam_size == 1`, else beam search.

    Args and returns as in `beam_search` and `sample_search`, without the scores: int32
    `(B, max_length)`.
    """
    if strategy is None:
        strategy = "greedy" if beam_size == 1 else "beam"
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}; received strategy={strategy!r}")
    if strategy in SAMPLERS:
        return sample_search(step_fn, state, start_ids, max_length, end_id, strategy, top_k,
                             top_p, temperature, seed, pad_id, forced_ids, early_exit)
    if strategy == "greedy" or beam_size == 1:
        return greedy_search(step_fn, state, start_ids, max_length, end_id, pad_id, forced_ids,
                             early_exit)
    tokens, _ = beam_search(
        step_fn, state, start_ids, max_length, end_id, beam_size, length_penalty, pad_id,
        forced_ids, early_exit,
    )
    return tokens


def _beam_search(
    step_fn, state, start_ids, max_length, end_id, beam_size, length_penalty, pad_id,
    forced_ids=None, early_exit=True,
):
    """Beam search returning every beam: `(sequences (B, K, L), scores (B, K))`,
    beams sorted by their length-normalised score, best first."""
    _check_max_length(max_length)
    if not isinstance(beam_size, int) or isinstance(beam_size, bool) or beam_size < 1:
        raise ValueError(f"beam_size must be an int >= 1; received beam_size={beam_size!r}")
    if length_penalty < 0:
        raise ValueError(
            f"length_penalty must be >= 0; received length_penalty={length_penalty!r}"
        )
    k = beam_size
    if forced_ids is not None:
        forced_ids = _check_forced(forced_ids, max_length)
    start_ids = tf.cast(start_ids, tf.int32)  # (B,)
    batch_size = tf.shape(start_ids)[0]
    positions = tf.range(max_length)  # (L,)

    def penalty(length):
        return ((5.0 + tf.cast(length, tf.float32)) / 6.0) ** length_penalty

    def body(index, token_ids, state, sequences, log_probs_sum, lengths, finished):
        logits, state = step_fn(token_ids, state, index)
        static_vocab_size = logits.shape[-1]
        vocab_size = static_vocab_size or tf.shape(logits)[-1]
        log_probs = tf.nn.log_softmax(tf.cast(logits, tf.float32))  # (B*K, V)
        log_probs = tf.reshape(log_probs, [batch_size, k, vocab_size])  # (B, K, V)
        if forced_ids is not None:  # a forced token is every beam's only continuation
            forced = tf.gather(forced_ids, index, axis=1)  # (B,)
            only = tf.where(tf.range(vocab_size)[None] == forced[:, None], 0.0, _NEG_INF)
            log_probs = tf.where((forced >= 0)[:, None, None], only[:, None], log_probs)
        # A finished beam has one continuation, pad_id, at no cost.
        pad_only = tf.where(tf.range(vocab_size) == pad_id, 0.0, _NEG_INF)  # (V,)
        log_probs = tf.where(finished[:, :, None], pad_only, log_probs)  # (B, K, V)

        # Top K' = min(K, V) tokens of every beam, then the top K of those K * K'.
        per_beam = min(k, static_vocab_size) if static_vocab_size else k
        top_log_probs, top_ids = tf.math.top_k(log_probs, k=per_beam)  # (B, K, K')
        candidate_sums = log_probs_sum[:, :, None] + top_log_probs  # (B, K, K')
        candidate_lengths = tf.where(finished, lengths, index + 1)  # (B, K)
        candidate_scores = candidate_sums / penalty(candidate_lengths)[:, :, None]
        flat_scores = tf.reshape(candidate_scores, [batch_size, k * per_beam])  # (B, K*K')
        _, best = tf.math.top_k(flat_scores, k=k)  # (B, K)
        parents = best // per_beam  # (B, K)

        def pick(values):  # (B, K, K') -> (B, K)
            return tf.gather(tf.reshape(values, [batch_size, k * per_beam]), best, batch_dims=1)

        next_ids = pick(top_ids)  # (B, K)
        log_probs_sum = pick(candidate_sums)  # (B, K)
        lengths = tf.gather(candidate_lengths, parents, batch_dims=1)  # (B, K)
        parent_finished = tf.gather(finished, parents, batch_dims=1)  # (B, K)
        finished = parent_finished | (next_ids == end_id)  # (B, K)

        sequences = tf.gather(sequences, parents, batch_dims=1)  # (B, K, L)
        sequences = tf.where(positions == index, next_ids[:, :, None], sequences)
        rows = tf.reshape(parents + k * tf.range(batch_size)[:, None], [-1])  # (B*K,)
        state = tf.nest.map_structure(lambda s: tf.gather(s, rows, axis=0), state)
        token_ids = tf.reshape(next_ids, [-1])  # (B*K,)
        return index + 1, token_ids, state, sequences, log_probs_sum, lengths, finished

    def cond(index, token_ids, state, sequences, log_probs_sum, lengths, finished):
        return ~tf.reduce_all(finished) if early_exit else tf.constant(True)

    state = tf.nest.map_structure(lambda s: tf.repeat(s, k, axis=0), state)  # (B*K, ...)
    token_ids = tf.repeat(start_ids, k, axis=0)  # (B*K,)
    sequences = tf.fill([batch_size, k, max_length], tf.constant(pad_id, tf.int32))
    # All beams start equal: only the first one may extend at the first step.
    first_beam = tf.concat([[0.0], tf.fill([k - 1], _NEG_INF)], axis=0)  # (K,)
    log_probs_sum = tf.tile(first_beam[None], [batch_size, 1])  # (B, K)
    lengths = tf.zeros([batch_size, k], tf.int32)  # (B, K)
    finished = tf.zeros([batch_size, k], tf.bool)  # (B, K)
    loop_vars = (tf.constant(0), token_ids, state, sequences, log_probs_sum, lengths, finished)
    _, _, _, sequences, log_probs_sum, lengths, _ = _while_loop(cond, body, loop_vars, max_length)
    return sequences, log_probs_sum / penalty(lengths)


def _check_max_length(max_length):
    if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 1:
        raise ValueError(
            f"max_length must be a Python int >= 1; received max_length={max_length!r}"
        )


def _while_loop(cond, body, loop_vars, max_length):
    """`tf.while_loop` for at most `max_length` steps that stops once `cond` is
    False, and gives the loop variables their initial static shapes after every
    step (dynamic batch sizes would otherwise lose them)."""

    def shaped_body(*loop_vars):
        return _keep_shapes(body(*loop_vars), loop_vars)

    return tf.while_loop(cond, shaped_body, loop_vars, maximum_iterations=max_length)


def _keep_shapes(new_values, values):
    """Checks that the loop (and so `step_fn`) kept the structure and shapes of
    `values`, and gives `new_values` their static shapes."""
    tf.nest.assert_same_structure(values, new_values)

    def keep(new, old):
        new = tf.convert_to_tensor(new)
        if not new.shape.is_compatible_with(old.shape):
            raise ValueError(
                "step_fn must return a state with the shapes of its input; received "
                f"shape {new.shape} for a tensor of shape {old.shape}"
            )
        new.set_shape(old.shape)
        return new

    return tf.nest.map_structure(keep, new_values, values)
