"""Save points on disk: model, optimizer, dropout RNG and trainer state, restored on re-run."""
from __future__ import annotations

import json
import logging
import pathlib

import tensorflow as tf

from pipelines.hooks import Hook, TrainerState

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"


class CheckpointHook(Hook):
    """Saves model, optimizer, dropout RNG and trainer state at every epoch end and save point
    (`trainer.checkpoint_every_steps`); restores on re-run. Checkpoints are numbered by the
    batches consumed (`state.step`), which is also where a resumed run picks up the data."""

    def __init__(self, directory: pathlib.Path, model, optimizer, write: bool = True):
        self.directory = pathlib.Path(directory)
        # Keras leaves the dropout seed generators' states out of the checkpoint's object
        # graph; listing the non-trainable variables puts them in (a variable reached by two
        # paths is saved once), so a resumed run draws the same dropout masks.
        self.checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer,
                                              rng=list(model.non_trainable_variables))
        self.manager = tf.train.CheckpointManager(self.checkpoint, str(self.directory), 2)
        self.state_file = self.directory / STATE_FILE
        self.write = write
        # The best epoch's weights, so that a resumed run still ends on them.
        self.best = tf.train.Checkpoint(model=model)
        self.best_prefix = str(self.directory / "best" / "weights")

    def restore(self, trainer) -> bool:
        if not (self.manager.latest_checkpoint and self.state_file.exists()):
            return False
        trainer.state = TrainerState.from_json(json.loads(self.state_file.read_text()))
        # The state file is written after the checkpoint, so a kill in between leaves it one
        # save behind: restore the checkpoint it describes (still kept, max_to_keep=2).
        suffix = f"-{trainer.state.step}"
        path = next((p for p in self.manager.checkpoints if p.endswith(suffix)),
                    self.manager.latest_checkpoint)
        self.checkpoint.restore(path).assert_existing_objects_matched()
        log.info("restored %s (epoch %d done, %d steps in all)", path, trainer.state.epoch,
                 trainer.state.step)
        return True

    def restore_best(self, epoch: int | None = None) -> bool:
        """Loads the best epoch's weights saved by an earlier (interrupted) process."""
        if not pathlib.Path(self.best_prefix + ".index").exists():
            return False
        self.best.read(self.best_prefix).expect_partial()
        return True

    def on_save_point(self, trainer):
        self._save(trainer)

    def on_epoch_end(self, trainer, epoch, logs):
        if self.write and trainer.state.best_epoch == epoch:
            self.best.write(self.best_prefix)
        self._save(trainer)

    def _save(self, trainer):
        """Only the chief writes (`write`); the others restore the chief's files."""
        if not self.write:
            return
        self.manager.save(checkpoint_number=trainer.state.step)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(trainer.state.to_json()))
        tmp.replace(self.state_file)
