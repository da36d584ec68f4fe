"""Broken save points: truncated, flipped or missing files fall back to the previous save
point with a warning naming the file; none usable is one clear error; a failed save (disk
full, read-only folder) names the folder and leaves the previous save point whole."""
import errno
import json
import logging
import os

import numpy as np
import pytest
import tensorflow as tf

from pipelines import checkpoints
from pipelines.checkpoints import CheckpointError, CheckpointHook
from pipelines.trainer import Hook
from tests.pipelines.test_fault_tolerance import _datasets, _trainer

DATA = "ckpt-8.data-00000-of-00001"


class _WeightsAtEpochEnds(Hook):
    def __init__(self):
        self.weights = {}

    def on_epoch_end(self, trainer, epoch, logs):
        self.weights[trainer.state.step] = trainer.model.get_weights()


@pytest.fixture
def two_save_points(tmp_path):
    """Save points at steps 4 and 8 (two epochs of 4 steps) and the weights of each."""
    trainer, weights = _trainer(), _WeightsAtEpochEnds()
    trainer.hooks += [weights, CheckpointHook(tmp_path, trainer.model, trainer.optimizer)]
    trainer.fit(*_datasets(), epochs=2, steps_per_epoch=4)
    assert {p.name for p in tmp_path.glob("ckpt-*.json")} == {"ckpt-4.json", "ckpt-8.json"}
    return tmp_path, weights.weights


def _restore(directory):
    trainer = _trainer()
    hook = CheckpointHook(directory, trainer.model, trainer.optimizer)
    return trainer, hook.restore(trainer)


def _truncate(path, fraction):
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * fraction)])


def _flip(path, at):
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0xFF
    path.write_bytes(bytes(data))


CORRUPTIONS = {
    "truncated data": (lambda d: _truncate(d / DATA, 0.5), DATA),
    "empty data": (lambda d: _truncate(d / DATA, 0.0), DATA),
    "flipped byte in data": (lambda d: _flip(d / DATA, 0.5), DATA),
    "missing index": (lambda d: (d / "ckpt-8.index").unlink(), "ckpt-8.index"),
    "flipped byte in index": (lambda d: _flip(d / "ckpt-8.index", 0.3), "ckpt-8.index"),
    "truncated record": (lambda d: _truncate(d / "ckpt-8.json", 0.6), "ckpt-8.json"),
    "edited record": (lambda d: (d / "ckpt-8.json").write_text(
        (d / "ckpt-8.json").read_text().replace('"epoch": 2', '"epoch": 3')), "ckpt-8.json"),
    "missing record": (lambda d: (d / "ckpt-8.json").unlink(), "ckpt-8.json"),
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_a_broken_latest_save_point_falls_back_to_the_previous_one(corruption, two_save_points,
                                                                    caplog):
    directory, weights = two_save_points
    corrupt, broken_file = CORRUPTIONS[corruption]
    corrupt(directory)
    with caplog.at_level(logging.WARNING, logger="pipelines.checkpoints"):
        trainer, restored = _restore(directory)
    assert restored and trainer.state.step == 4 and trainer.state.epoch == 1
    for w1, w2 in zip(trainer.model.get_weights(), weights[4]):
        np.testing.assert_array_equal(w1, w2)
    assert f"save point ckpt-8 is unusable: {directory / broken_file}" in caplog.text
    assert "falling back to the previous one" in caplog.text


def test_no_usable_save_point_is_one_error_naming_the_files_to_remove(two_save_points):
    directory, _ = two_save_points
    _truncate(directory / DATA, 0.5)
    (directory / "ckpt-4.index").unlink()
    with pytest.raises(CheckpointError) as raised:
        _restore(directory)
    message = str(raised.value)
    assert message.startswith(f"no usable save point in {directory}: {directory / DATA} has ")
    assert f"{directory / 'ckpt-4.index'} is missing" in message
    assert f"Remove {directory / 'ckpt-8.data-00000-of-00001'}, " in message
    assert f"(or the whole folder {directory}) to train this run from scratch" in message
    assert "continues the same MLflow run" in message


def test_a_kill_during_the_first_save_starts_from_scratch(tmp_path, caplog):
    trainer = _trainer()
    CheckpointHook(tmp_path, trainer.model, trainer.optimizer).checkpoint.write(
        str(tmp_path / "ckpt-4"))  # TF's files, and no record: the kill came before it
    with caplog.at_level(logging.WARNING, logger="pipelines.checkpoints"):
        assert _restore(tmp_path)[1] is False
    assert "holds no completed save point" in caplog.text


def test_a_fallback_run_trains_on_and_removes_the_abandoned_save_point(two_save_points):
    directory, _ = two_save_points
    _flip(directory / DATA, 0.5)
    trainer = _trainer()
    hook = CheckpointHook(directory, trainer.model, trainer.optimizer)
    trainer.hooks.append(hook)
    assert hook.restore(trainer)
    trainer.fit(*_datasets(), epochs=3, steps_per_epoch=4)
    assert {p.name for p in directory.glob("ckpt-*.json")} == {"ckpt-8.json", "ckpt-12.json"}
    assert _restore(directory)[0].state.step == 12


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("failing", ["checkpoint", "record"])
def test_a_full_disk_during_a_save_names_the_folder_and_keeps_the_previous_save_point(
        failing, two_save_points, monkeypatch):
    directory, weights = two_save_points
    trainer = _trainer()
    hook = CheckpointHook(directory, trainer.model, trainer.optimizer)
    assert hook.restore(trainer)
    trainer.hooks.append(hook)
    if failing == "checkpoint":
        def partial_write(self, prefix, options=None):
            with open(f"{prefix}.data-00000-of-00001", "wb") as handle:
                handle.write(b"\0" * 100)  # some bytes made it before the disk filled up
            _disk_full()

        monkeypatch.setattr(tf.train.Checkpoint, "write", partial_write)
    else:
        monkeypatch.setattr(checkpoints, "write_atomically", _disk_full)
    with pytest.raises(CheckpointError) as raised:
        trainer.fit(*_datasets(), epochs=3, steps_per_epoch=4)
    assert str(raised.value).startswith(
        f"could not write the save point at step 12 in {directory}: OSError: [Errno 28] No "
        "space left on device. Free space there or make it writable")
    assert str(raised.value).endswith("the previous one (ckpt-8) is intact")
    assert not list(directory.glob("ckpt-12*"))  # its partial files are gone
    monkeypatch.undo()
    restored, _ = _restore(directory)
    assert restored.state.step == 8
    for w1, w2 in zip(restored.model.get_weights(), weights[8]):
        np.testing.assert_array_equal(w1, w2)


def test_a_read_only_folder_is_a_clear_error(two_save_points):
    directory, _ = two_save_points
    trainer = _trainer()
    hook = CheckpointHook(directory, trainer.model, trainer.optimizer)
    assert hook.restore(trainer)
    trainer.hooks.append(hook)
    directory.chmod(0o500)
    try:
        if os.access(directory, os.W_OK):
            pytest.skip("running as a user who can write anywhere (root)")
        with pytest.raises(CheckpointError, match=f"could not write the save point at step 12 "
                                                  f"in {directory}: .*make it writable"):
            trainer.fit(*_datasets(), epochs=3, steps_per_epoch=4)
    finally:
        directory.chmod(0o700)
    assert _restore(directory)[0].state.step == 8


def test_records_are_written_atomically(tmp_path, monkeypatch):
    target = tmp_path / "trainer_state.json"
    checkpoints.write_atomically(target, json.dumps({"epoch": 1}))

    def fail(*args):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError):
        checkpoints.write_atomically(target, json.dumps({"epoch": 2}))
    assert json.loads(target.read_text()) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["trainer_state.json"]  # no temp file left


def test_broken_best_weights_are_a_clear_error(tmp_path):
    trainer = _trainer()
    hook = CheckpointHook(tmp_path, trainer.model, trainer.optimizer)
    trainer.state.best_epoch = 0
    hook.on_epoch_end(trainer, 0, {})
    assert hook.restore_best(0)
    _truncate(tmp_path / "best" / "epoch-0.data-00000-of-00001", 0.5)
    with pytest.raises(CheckpointError, match=(
            r"the best epoch's weights are unusable: .*epoch-0.data-00000-of-00001 has \d+ "
            rf"bytes.*Remove {tmp_path / 'best'} to end this run on its last epoch's weights")):
        hook.restore_best(0)
