"""`LinearChainCRF`: a linear-chain conditional random field over per-token tag scores.

A tag sequence `y` of a row with valid positions `t_1 < ... < t_n` (the padding mask) scores

    score(y) = start[y_1] + sum_i potentials[t_i, y_i] + sum_i transitions[y_{i-1}, y_i] + end[y_n]

and `p(y) = exp(score(y)) / Z`, with `log Z` the logsumexp over all `K^n` sequences. The
forward algorithm computes `log Z` in log space, Viterbi the best `y`; both are one `tf.scan`
over T, so they trace once for any T and compile with XLA.

Masks: only the valid positions form the chain. A padded step carries the forward and
Viterbi states through unchanged (so right padding, left padding and holes all work), its
decoded tag is 0, and a row without valid positions has `log Z = score = 0` (finite).

Constraints: `allowed_transitions[i][j] = False` replaces `transitions[i, j]` by `-1e4`
(likewise `allowed_start` / `allowed_end` for the boundary scores), in training and in
decoding alike, so a forbidden sequence has probability ~`exp(-1e4)` and Viterbi never
picks it while an allowed one exists. `iob2_allowed_transitions(tag_names)` builds them
for IOB2 tags.
"""
import keras
import numpy as np
import tensorflow as tf
from keras import ops

from layers.masking import resolve_padding_mask

# The score of a forbidden transition: -inf-like, yet `logsumexp` over a row of them and
# sums of T of them stay finite in float32 (the CRF always computes in float32).
FORBIDDEN = -1e4


def iob2_allowed_transitions(tag_names):
    """The transitions that IOB2 allows between `tag_names`, as `LinearChainCRF` arguments.

    `I-X` may only follow `B-X` or `I-X`: forbidden are `O -> I-X`, `B-Y -> I-X` and
    `I-Y -> I-X` for `Y != X`, and a sentence starting with `I-X`. Everything else is allowed
    (any tag may end a sentence). Pure Python, no TensorFlow.

    Args:
        tag_names: sequence of K tag names, each `"O"`, `"B-<type>"` or `"I-<type>"`, in
            the order of the tag ids.

    Returns:
        A dict `{"allowed_transitions": K lists of K bools (from tag i to tag j),
        "allowed_start": K bools}`, to pass as `LinearChainCRF(K, **allowed)`.

    Example:
    >>> allowed = iob2_allowed_transitions(["B-PER", "I-PER", "O"])
    >>> allowed["allowed_transitions"][2][1]  # O -> I-PER
    False
    >>> crf = LinearChainCRF(3, **allowed)
    """
    parsed = []
    for name in tag_names:
        if name == "O":
            parsed.append(("O", None))
        elif isinstance(name, str) and name[:2] in ("B-", "I-") and len(name) > 2:
            parsed.append((name[0], name[2:]))
        else:
            raise ValueError(
                "tag_names must be IOB2 tags (\"O\", \"B-<type>\" or \"I-<type>\"); "
                f"received the tag {name!r} in tag_names={list(tag_names)}"
            )
    if len(set(tag_names)) != len(parsed):
        raise ValueError(f"tag_names must be distinct; received tag_names={list(tag_names)}")

    def allowed(previous, current):
        prefix, entity = current
        if prefix != "I":
            return True
        return previous is not None and previous[0] in ("B", "I") and previous[1] == entity

    return {
        "allowed_transitions": [[allowed(p, c) for c in parsed] for p in parsed],
        "allowed_start": [allowed(None, c) for c in parsed],
    }


def _check_allowed(name, value, shape):
    """`value` as (nested) lists of bools of `shape`, or None; raises naming the argument."""
    if value is None:
        return None
    array = np.asarray(value)
    if array.shape != shape or array.dtype != bool:
        kind = "a (K, K) nested list" if len(shape) == 2 else "a (K,) list"
        raise ValueError(
            f"{name} must be {kind} of bools with K={shape[0]}; received {name}={value!r}"
        )
    return array.tolist()


@keras.saving.register_keras_serializable(package="layers")
class LinearChainCRF(keras.layers.Layer):
    """A linear-chain CRF: learned tag transitions, log-likelihood and Viterbi decoding.

    The layer owns the transition scores; the per-token scores (potentials, usually a
    `Dense(num_tags)` head) come from the model. Calling the layer returns the potentials
    unchanged, which puts the transitions into the model (saved, exported, trained) while
    the model's output stays the potentials; train with `log_likelihood` (or
    `negative_log_likelihood`) of that output and decode it with `decode`:

    ```python
    potentials = crf(head(x))                  # (B, T, K), the model output
    loss = crf.negative_log_likelihood(potentials, tags, padding_mask)  # (B,)
    tags = crf.decode(potentials, padding_mask)  # (B, T) int32
    ```

    All scores are computed in float32 (also under mixed precision).

    Args:
        num_tags: int, K.
        use_boundary_transitions: bool; learn start and end scores (K,) besides the
            (K, K) transitions. Defaults to `True`.
        allowed_transitions: optional (K, K) nested list of bools; `[i][j] = False`
            forbids tag i followed by tag j (score -1e4). Defaults to `None` (all allowed).
        allowed_start: optional (K,) list of bools; False forbids starting with that tag.
        allowed_end: optional (K,) list of bools; False forbids ending with that tag.
        transitions_initializer: initializer of the transitions and boundary scores.
            Defaults to `"zeros"` (uniform transitions: training starts from the
            per-token model).

    Call arguments:
        potentials: `(B, T, K)` float, the per-token tag scores.

    Returns:
        `potentials`, unchanged (with its Keras mask, if any).

    Methods (all take `potentials (B, T, K)` and `padding_mask (B, T)` bool, True at valid
    positions; with `padding_mask=None` the implicit Keras mask of `potentials` is used, and
    without one every position is valid):
        log_likelihood(potentials, tags, padding_mask=None): `(B,)` float32,
            `score(tags) - log Z`; `tags (B, T)` int, ignored at padded positions; 0 for a
            row without valid positions.
        negative_log_likelihood(potentials, tags, padding_mask=None): `(B,)`, its negative.
        log_partition(potentials, padding_mask=None): `(B,)` float32, `log Z`.
        sequence_score(potentials, tags, padding_mask=None): `(B,)` float32, `score(tags)`.
        decode(potentials, padding_mask=None, return_score=False): `(B, T)` int32, the
            Viterbi tags (0 at padded positions); with `return_score`, also the `(B,)`
            float32 score of that path.

    Example:
    >>> crf = LinearChainCRF(5, **iob2_allowed_transitions(tag_names))
    >>> potentials = crf(keras.layers.Dense(5)(features))  # (B, T, 5)
    >>> tags = crf.decode(potentials, padding_mask)  # (B, T)

    Reference: Lafferty et al., "Conditional Random Fields" (2001); Lample et al.,
    https://arxiv.org/abs/1603.01360 (2016), the BiLSTM-CRF tagger.
    """

    def __init__(
        self,
        num_tags,
        use_boundary_transitions=True,
        allowed_transitions=None,
        allowed_start=None,
        allowed_end=None,
        transitions_initializer="zeros",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(num_tags, int) or isinstance(num_tags, bool) or num_tags <= 0:
            raise ValueError(f"num_tags must be a positive int; received num_tags={num_tags!r}")
        self.num_tags = num_tags
        self.use_boundary_transitions = bool(use_boundary_transitions)
        self.allowed_transitions = _check_allowed(
            "allowed_transitions", allowed_transitions, (num_tags, num_tags)
        )
        self.allowed_start = _check_allowed("allowed_start", allowed_start, (num_tags,))
        self.allowed_end = _check_allowed("allowed_end", allowed_end, (num_tags,))
        self.transitions_initializer = keras.initializers.get(transitions_initializer)
        self.supports_masking = True

    def build(self, potentials_shape):
        if potentials_shape[-1] is not None and potentials_shape[-1] != self.num_tags:
            raise ValueError(
                f"potentials must have num_tags={self.num_tags} scores in the last axis; "
                f"received potentials with shape {tuple(potentials_shape)}"
            )
        self.transitions = self.add_weight(
            name="transitions",
            shape=(self.num_tags, self.num_tags),
            initializer=self.transitions_initializer,
            dtype="float32",
            autocast=False,  # float32 scores even under a mixed-precision call
        )
        if self.use_boundary_transitions:
            self.start_transitions = self.add_weight(
                name="start_transitions",
                shape=(self.num_tags,),
                initializer=self.transitions_initializer,
                dtype="float32",
                autocast=False,
            )
            self.end_transitions = self.add_weight(
                name="end_transitions",
                shape=(self.num_tags,),
                initializer=self.transitions_initializer,
                dtype="float32",
                autocast=False,
            )

    def call(self, potentials):
        return potentials

    def compute_mask(self, inputs, mask=None):
        return mask

    def compute_output_shape(self, potentials_shape):
        return potentials_shape

    # ---------------------------------------------------------------- the scores
    def _scores(self):
        """The constrained `(transitions (K, K), start (K,), end (K,))`, float32."""

        def constrain(scores, allowed):
            if allowed is None:
                return scores
            return ops.where(ops.convert_to_tensor(allowed), scores, FORBIDDEN)

        zeros = ops.zeros((self.num_tags,), "float32")
        start = self.start_transitions if self.use_boundary_transitions else zeros
        end = self.end_transitions if self.use_boundary_transitions else zeros
        transitions = ops.convert_to_tensor(self.transitions)
        return (
            constrain(transitions, self.allowed_transitions),
            constrain(ops.convert_to_tensor(start), self.allowed_start),
            constrain(ops.convert_to_tensor(end), self.allowed_end),
        )

    def _prepare(self, potentials, padding_mask):
        """Builds the layer if needed; returns time-major float32 potentials (T, B, K)
        and the mask (T, B) bool."""
        if not self.built:
            self.build(potentials.shape)
        mask = resolve_padding_mask(potentials, padding_mask, length=potentials.shape[1])
        potentials = ops.cast(potentials, "float32")
        if mask is None:
            mask = ops.ones(ops.shape(potentials)[:2], "bool")
        return ops.transpose(potentials, (1, 0, 2)), ops.transpose(mask)

    def log_partition(self, potentials, padding_mask=None):
        """`log Z` (B,) by the forward algorithm in log space; 0 for all-padding rows."""
        potentials, mask = self._prepare(potentials, padding_mask)  # (T, B, K), (T, B)
        transitions, start, end = self._scores()
        batch_size = ops.shape(potentials)[1]

        def step(carry, inputs):
            alpha, started = carry  # (B, K) log-sum of the prefixes ending in each tag, (B,)
            potentials_t, valid = inputs  # (B, K), (B,)
            # (B, K_prev, 1) + (K_prev, K) -> logsumexp over the previous tag -> (B, K)
            continued = tf.reduce_logsumexp(alpha[:, :, None] + transitions, axis=1)
            new = ops.where(started[:, None], continued, start) + potentials_t
            alpha = ops.where(valid[:, None], new, alpha)
            return alpha, ops.logical_or(started, valid)

        initial = (ops.zeros((batch_size, self.num_tags)), ops.zeros((batch_size,), "bool"))
        alpha, started = tf.scan(step, (potentials, mask), initializer=initial)
        log_z = tf.reduce_logsumexp(alpha[-1] + end, axis=-1)  # (B,)
        return ops.where(started[-1], log_z, 0.0)

    def sequence_score(self, potentials, tags, padding_mask=None):
        """`score(tags)` (B,): unary + transition + boundary scores over valid positions."""
        potentials, mask = self._prepare(potentials, padding_mask)  # (T, B, K), (T, B)
        tags = ops.transpose(ops.cast(tags, "int32"))  # (T, B)
        transitions, start, end = self._scores()
        batch_size = ops.shape(potentials)[1]

        def step(carry, inputs):
            score, previous, started = carry  # (B,), (B,) int32, (B,)
            potentials_t, tags_t, valid = inputs  # (B, K), (B,), (B,)
            unary = ops.take_along_axis(potentials_t, tags_t[:, None], axis=1)[:, 0]  # (B,)
            pairs = ops.stack([previous, tags_t], axis=1)  # (B, 2)
            link = ops.where(started, tf.gather_nd(transitions, pairs), ops.take(start, tags_t))
            score = score + ops.where(valid, unary + link, 0.0)
            previous = ops.where(valid, tags_t, previous)
            return score, previous, ops.logical_or(started, valid)

        initial = (
            ops.zeros((batch_size,)),
            ops.zeros((batch_size,), "int32"),
            ops.zeros((batch_size,), "bool"),
        )
        score, previous, started = tf.scan(step, (potentials, tags, mask), initializer=initial)
        return score[-1] + ops.where(started[-1], ops.take(end, previous[-1]), 0.0)

    def log_likelihood(self, potentials, tags, padding_mask=None):
        """`score(tags) - log Z` (B,), float32; 0 for all-padding rows."""
        return self.sequence_score(potentials, tags, padding_mask) - self.log_partition(
            potentials, padding_mask
        )

    def negative_log_likelihood(self, potentials, tags, padding_mask=None):
        """`log Z - score(tags)` (B,), float32, >= 0: the training loss per row."""
        return -self.log_likelihood(potentials, tags, padding_mask)

    def decode(self, potentials, padding_mask=None, return_score=False):
        """The Viterbi tags (B, T) int32 (0 at padded positions) [and their score (B,)]."""
        potentials, mask = self._prepare(potentials, padding_mask)  # (T, B, K), (T, B)
        transitions, start, end = self._scores()
        batch_size = ops.shape(potentials)[1]
        identity = ops.broadcast_to(ops.arange(self.num_tags, dtype="int32"),
                                    (batch_size, self.num_tags))  # (B, K)

        def forward(carry, inputs):
            delta, started, _ = carry  # (B, K) best prefix score ending in each tag
            potentials_t, valid = inputs
            candidates = delta[:, :, None] + transitions  # (B, K_prev, K)
            best_previous = ops.cast(ops.argmax(candidates, axis=1), "int32")  # (B, K)
            continued = ops.max(candidates, axis=1)
            new = ops.where(started[:, None], continued, start) + potentials_t
            delta = ops.where(valid[:, None], new, delta)
            # Padded steps and the first valid step point each tag at itself, so the
            # backtrace walks through them unchanged.
            linked = ops.logical_and(valid, started)[:, None]
            backpointers = ops.where(linked, best_previous, identity)
            return delta, ops.logical_or(started, valid), backpointers

        initial = (
            ops.zeros((batch_size, self.num_tags)),
            ops.zeros((batch_size,), "bool"),
            identity,
        )
        delta, started, backpointers = tf.scan(forward, (potentials, mask), initializer=initial)
        final = delta[-1] + end  # (B, K)
        last_tag = ops.cast(ops.argmax(final, axis=-1), "int32")  # (B,)

        def backward(next_tag, next_backpointers):
            # The tag at t from the tag at t + 1 and the backpointers of step t + 1.
            return ops.take_along_axis(next_backpointers, next_tag[:, None], axis=1)[:, 0]

        # Step t reads the backpointers of t + 1; the last step reads the identity, which
        # keeps `last_tag` (no slicing of an empty tensor at T = 1).
        following = ops.concatenate([backpointers[1:], identity[None]], axis=0)  # (T, B, K)
        tags = tf.scan(backward, following, initializer=last_tag, reverse=True)  # (T, B)
        tags = ops.transpose(ops.where(mask, tags, 0))  # (B, T)
        if not return_score:
            return tags
        score = ops.where(started[-1], ops.max(final, axis=-1), 0.0)
        return tags, score

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_tags": self.num_tags,
                "use_boundary_transitions": self.use_boundary_transitions,
                "allowed_transitions": self.allowed_transitions,
                "allowed_start": self.allowed_start,
                "allowed_end": self.allowed_end,
                "transitions_initializer": keras.initializers.serialize(
                    self.transitions_initializer
                ),
            }
        )
        return config
