"""Save points on disk: model, optimizer, dropout RNG and trainer state, restored on re-run,
safe against kills, truncation, flipped bytes and full disks.

What `checkpoints/` holds:
    ckpt-N.index, ckpt-N.data-00000-of-00001   TF checkpoint after N steps (batches consumed)
    ckpt-N.json          its record: the trainer state, and each file's size and CRC-32; the
                         record carries a CRC-32 of itself
    trainer_state.json   the latest state, for people and tools (restore reads the records)
    best/epoch-E.*       the best epoch's weights, with their record best/epoch-E.json

A save point exists once its record is on disk. TF writes its files into a temporary folder
and renames them into place; the record is written last, to a temporary file that is flushed
to disk and then renamed over (`write_atomically`). A kill at any moment therefore leaves at
worst a save point without a record, which restore skips. Restore checks the newest save point
against its record and falls back to the previous one (two are kept) with a warning that names
the broken file; when none is usable it stops with one error that lists the files to remove.
A save that fails (disk full, read-only folder) raises one `CheckpointError` naming the
folder, and removes only its own partial files: the previous save point stays whole.
"""
from __future__ import annotations

import json
import logging
import os
import pathlib
import re
import shutil
import zlib
from typing import Any

import tensorflow as tf

from pipelines.hooks import Hook, TrainerState

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
KEEP = 2  # save points kept: the newest and one to fall back on
_CHUNK = 1 << 22
# TF's own "this file is broken or gone" errors; anything else (a changed model) is not ours.
_BROKEN = (tf.errors.DataLossError, tf.errors.NotFoundError, tf.errors.OutOfRangeError)


class CheckpointError(RuntimeError):
    """A save point cannot be written, or none on disk can be restored (says what to do)."""


class _Unusable(Exception):
    """One save point cannot be restored; the message names the file and why."""


def write_atomically(path: pathlib.Path, text: str) -> None:
    """Writes `text` to a temporary file beside `path`, flushes it to disk, then renames it
    over `path`: readers see the old content or the new, never a part."""
    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: pathlib.Path) -> None:
    """Makes renames in `directory` durable (POSIX; a no-op where directories cannot be
    opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _digest(path: pathlib.Path, sync: bool = False) -> dict[str, int]:
    crc = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
        if sync:  # TF does not fsync: the record must not reach the disk before the data
            os.fsync(handle.fileno())
    return {"bytes": path.stat().st_size, "crc32": crc}


def _sealed(body: dict) -> str:
    return json.dumps({**body, "crc32": zlib.crc32(json.dumps(body, sort_keys=True).encode())},
                      indent=1)


class _SavePoints:
    """Numbered TF checkpoints `directory/prefix-N`, each committed by its record
    `prefix-N.json`."""

    def __init__(self, directory: pathlib.Path, prefix: str, checkpoint: tf.train.Checkpoint,
                 keep: int = KEEP, partial: bool = False):
        self.directory, self.prefix, self.checkpoint = directory, prefix, checkpoint
        self.keep, self.partial = keep, partial
        self._name = re.compile(rf"^{re.escape(prefix)}-(\d+)(\.index|\.data-\d+-of-\d+|\.json|_temp)$")

    def path(self, number: int, suffix: str = "") -> pathlib.Path:
        return self.directory / f"{self.prefix}-{number}{suffix}"

    def numbers(self) -> list[int]:
        """Every number with a file on disk, record or not, newest first."""
        if not self.directory.is_dir():
            return []
        found = {int(m.group(1)) for p in self.directory.iterdir()
                 if (m := self._name.match(p.name))}
        return sorted(found, reverse=True)

    def files(self, number: int) -> list[pathlib.Path]:
        if not self.directory.is_dir():
            return []
        return sorted(p for p in self.directory.iterdir()
                      if (m := self._name.match(p.name)) and int(m.group(1)) == number)

    def committed(self, number: int) -> bool:
        return self.path(number, ".json").exists()

    def save(self, number: int, payload: dict) -> None:
        """TF files, then the record that commits them. On failure removes this number's
        uncommitted files and re-raises (OSError or a TF error)."""
        had_record = self.committed(number)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            prefix = self.path(number)
            self.checkpoint.write(str(prefix))
            tf_files = [p for p in self.files(number) if p.suffix != ".json" and p.is_file()]
            record = {"format": 1, "files": {p.name: _digest(p, sync=True) for p in tf_files},
                      **payload}
            write_atomically(self.path(number, ".json"), _sealed(record))
        except BaseException:
            if not had_record:
                self.remove(number)
            raise

    def load(self, number: int) -> dict:
        """The record, once it and every file it lists check out; else `_Unusable`."""
        record_path = self.path(number, ".json")
        if not record_path.exists():
            raise _Unusable(f"{record_path} is missing (the process stopped while writing "
                            "this save point)")
        try:
            record = json.loads(record_path.read_text(encoding="utf-8"))
            crc = record.pop("crc32")
            if zlib.crc32(json.dumps(record, sort_keys=True).encode()) != crc:
                raise ValueError("it fails its own checksum")
            files = record["files"]
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as error:
            raise _Unusable(f"{record_path} is corrupt ({error})") from None
        if not any(name.endswith(".index") for name in files):
            raise _Unusable(f"{record_path} is corrupt (it lists no .index file)")
        for name, expected in files.items():
            path = self.directory / name
            if not path.exists():
                raise _Unusable(f"{path} is missing")
            size = path.stat().st_size
            if size != expected["bytes"]:
                raise _Unusable(f"{path} has {size} bytes, its record {record_path.name} says "
                                f"{expected['bytes']} (truncated or overwritten)")
            if _digest(path)["crc32"] != expected["crc32"]:
                raise _Unusable(f"{path} fails its checksum in {record_path.name} (corrupt)")
        return record

    def read(self, number: int) -> None:
        """Restores the variables from this save point's TF files."""
        try:
            status = self.checkpoint.read(str(self.path(number)))
        except _BROKEN as error:
            raise _Unusable(f"{self.path(number)}: {error.message}") from None
        if self.partial:
            status.expect_partial()
        else:
            status.assert_existing_objects_matched()

    def prune(self, current: int) -> None:
        """Keeps the `keep` newest committed save points up to `current`; removes the rest,
        and anything numbered after `current` (left by a timeline that a restore fell back
        from, or by a save that never finished)."""
        kept = [n for n in self.numbers() if n <= current and self.committed(n)][: self.keep]
        for number in self.numbers():
            if number not in kept:
                self.remove(number)

    def remove(self, number: int) -> None:
        for path in self.files(number) + [self.path(number, ".json").with_name(
                f".{self.prefix}-{number}.json.tmp")]:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


class CheckpointHook(Hook):
    """Writes a save point (model, optimizer, dropout RNG, trainer state) at every epoch end
    and mid-epoch save point (`trainer.checkpoint_every_steps`, a signal); restores the newest
    usable one on re-run. Save points are numbered by the batches consumed (`state.step`),
    which is also where a resumed run picks up the data.

    Args:
        directory: the run's `checkpoints/` folder (created at the first save).
        model: the `keras.Model`.
        optimizer: its optimizer.
        write: whether this process writes (only the chief does; the others restore the
            chief's files).
    """

    def __init__(self, directory: pathlib.Path, model, optimizer, write: bool = True):
        self.directory = pathlib.Path(directory)
        # Keras leaves the dropout seed generators' states out of the checkpoint's object
        # graph; listing the non-trainable variables puts them in (a variable reached by two
        # paths is saved once), so a resumed run draws the same dropout masks.
        self.checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer,
                                              rng=list(model.non_trainable_variables))
        self.saves = _SavePoints(self.directory, "ckpt", self.checkpoint)
        # The best epoch's weights, so that a resumed run still ends on them.
        self.best = _SavePoints(self.directory / "best", "epoch", tf.train.Checkpoint(model=model),
                                partial=True)
        self.state_file = self.directory / STATE_FILE
        self.write = write

    # ------------------------------------------------------------------ restore
    def restore(self, trainer) -> bool:
        """Restores the newest usable save point into `trainer` (variables and `state`);
        False when there is none. Raises `CheckpointError` when save points exist but none
        is usable."""
        numbers = self.saves.numbers()
        if numbers and not any(self.saves.committed(n) for n in numbers):
            # Killed during the very first save: nothing was lost (the first save removes
            # the leftovers).
            log.warning("%s holds no completed save point (the process stopped while writing "
                        "the first one); training starts from scratch", self.directory)
            return False
        problems = []
        for number in numbers:
            try:
                state = self._state(number)
                self.saves.read(number)
            except _Unusable as problem:
                problems.append(str(problem))
                log.warning("save point %s is unusable: %s; falling back to the previous one",
                            self.saves.path(number).name, problem)
                continue
            trainer.state = state
            log.info("restored %s (epoch %d done, %d steps in all)", self.saves.path(number),
                     state.epoch, state.step)
            return True
        if not numbers:
            return False
        files = [str(p) for n in numbers for p in self.saves.files(n)]
        raise CheckpointError(
            f"no usable save point in {self.directory}: " + "; ".join(problems)
            + f". Remove {', '.join(files)} (or the whole folder {self.directory}) to train "
            "this run from scratch; the MLflow run id beside it stays, so the re-run "
            "continues the same MLflow run")

    def _state(self, number: int) -> TrainerState:
        record = self.saves.load(number)
        try:
            state = TrainerState.from_json(record["state"])
        except (KeyError, ValueError, TypeError) as error:
            raise _Unusable(f"{self.saves.path(number, '.json')} holds no valid trainer state "
                            f"({error})") from None
        if state.step != number:
            raise _Unusable(f"{self.saves.path(number, '.json')} describes step {state.step}, "
                            f"not {number}")
        return state

    def restore_best(self, epoch: int | None = None) -> bool:
        """Loads the best epoch's weights saved by an earlier (interrupted) process: those of
        `epoch` (the state's `best_epoch`), else the newest. False when none were saved."""
        numbers = [epoch] if epoch is not None else self.best.numbers()[:1]
        if not numbers or not self.best.files(numbers[0]):
            return False
        try:
            self.best.load(numbers[0])
            self.best.read(numbers[0])
        except _Unusable as problem:
            raise CheckpointError(
                f"the best epoch's weights are unusable: {problem}. Remove "
                f"{self.best.directory} to end this run on its last epoch's weights instead"
            ) from None
        return True

    # ------------------------------------------------------------------ save
    def on_save_point(self, trainer):
        self._save(trainer)

    def on_epoch_end(self, trainer, epoch, logs):
        if self.write and trainer.state.best_epoch == epoch:
            self._write(self.best, epoch, {"epoch": epoch}, f"the best weights (epoch {epoch + 1})")
        self._save(trainer)

    def _save(self, trainer):
        """Only the chief writes (`write`); the others restore the chief's files."""
        if not self.write:
            return
        state = trainer.state
        self._write(self.saves, state.step, {"state": state.to_json()},
                    f"the save point at step {state.step}",
                    lambda: write_atomically(self.state_file, json.dumps(state.to_json())))

    def _write(self, slots: _SavePoints, number: int, payload: dict, what: str,
               then=None) -> None:
        try:
            slots.save(number, payload)
            if then is not None:
                then()
        except (OSError, tf.errors.OpError) as error:
            previous = [n for n in slots.numbers() if n != number and slots.committed(n)]
            kept = (f"the previous one ({slots.path(previous[0]).name}) is intact" if previous
                    else "no earlier one exists")
            raise CheckpointError(
                f"could not write {what} in {slots.directory}: {_reason(error)}. Free space "
                f"there or make it writable, then re-run the same command; {kept}") from error
        slots.prune(number)


def _reason(error: BaseException) -> str:
    if isinstance(error, tf.errors.OpError):
        return f"{type(error).__name__}: {error.message}"
    return f"{type(error).__name__}: {error}"
