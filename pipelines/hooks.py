"""What the trainer shares with its plugins: the `Hook` protocol and the `TrainerState`.

Free of TensorFlow, so that modules which only define hooks (`pipelines.tracking`, which
`pipelines.compare` imports) stay fast to import. `pipelines.trainer` re-exports both.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from pipelines.trainer import Trainer


@dataclasses.dataclass
class PartialEpoch:
    """An epoch cut short by a save point: the steps done and the monitoring sums
    `{name: (total, count)}` so far, so that a resumed epoch's `train_*` logs equal an
    uninterrupted epoch's."""

    steps: int = 0
    totals: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class TrainerState:
    """Where training is; saved with every checkpoint (`trainer_state.json`) and restored on
    resume.

    Attributes:
        epoch: epochs completed.
        step: batches consumed in all, which is also where a resumed run picks up the data.
        history: one dict of logs per completed epoch.
        best: the best value of the early-stopping monitor so far (None before epoch 1).
        best_epoch: its epoch (0-based).
        wait: epochs since the monitor last improved.
        partial: the epoch in progress at a mid-epoch save point; None at epoch ends.
        nan_recoveries: non-finite losses recovered from so far.
        lr_scale: the factor on the configured learning rate (halved by each recovery).
    """

    epoch: int = 0
    step: int = 0
    history: list[dict[str, float]] = dataclasses.field(default_factory=list)
    best: float | None = None
    best_epoch: int | None = None
    wait: int = 0
    partial: PartialEpoch | None = None
    nan_recoveries: int = 0
    lr_scale: float = 1.0

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict; unset optional fields (None) are left out."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, data: Any) -> "TrainerState":
        """The inverse of `to_json`; raises ValueError naming the key when the data is not a
        state (a corrupt or foreign file). Keys missing from older states take defaults."""
        if not isinstance(data, dict):
            raise ValueError(f"a trainer state is a JSON object; received {type(data).__name__}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise ValueError(f"unknown trainer state keys {unknown}; expected some of {sorted(fields)}")
        state = dict(data)
        partial = state.get("partial")
        if partial is not None:
            _expect(partial, "partial", dict)
            state["partial"] = PartialEpoch(
                steps=_expect(partial.get("steps"), "partial.steps", int),
                totals={name: tuple(float(x) for x in pair)
                        for name, pair in _expect(partial.get("totals", {}), "partial.totals",
                                                  dict).items()},
            )
        for key, kind in (("epoch", int), ("step", int), ("wait", int), ("nan_recoveries", int),
                          ("history", list), ("lr_scale", (int, float))):
            if key in state:
                _expect(state[key], key, kind)
        for key, kind in (("best", (int, float)), ("best_epoch", int)):
            if state.get(key) is not None:
                _expect(state[key], key, kind)
        if any(not isinstance(row, dict) for row in state.get("history", [])):
            raise ValueError("trainer state key 'history' must be a list of objects")
        return cls(**state)


def _expect(value: Any, key: str, kind) -> Any:
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ValueError(f"trainer state key {key!r} has the wrong type; received {value!r}")
    return value


class Hook:
    """Called by the trainer at the edges of training; override what you need."""

    def on_train_begin(self, trainer: "Trainer") -> None: ...

    def on_save_point(self, trainer: "Trainer") -> None:
        """Every `checkpoint_every_steps` steps inside an epoch, and when a signal stops
        training mid-epoch; `trainer.state` holds the partial epoch (`state.partial`) and the
        batches consumed (`state.step`)."""

    def on_epoch_end(self, trainer: "Trainer", epoch: int, logs: dict) -> None: ...

    def on_train_end(self, trainer: "Trainer", logs: dict) -> None: ...

    def on_interrupt(self, trainer: "Trainer", signal_name: str) -> None:
        """After a SIGTERM/SIGINT stopped training and the save point is written (instead of
        `on_train_end`); `trainer.state` says where it stopped."""
