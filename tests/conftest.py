"""Shared fixtures. Two logical CPU devices exist for every test so that layers
and trainers can be checked under `tf.distribute.MirroredStrategy` on a laptop."""
import os
import pathlib

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def _split_cpu() -> None:
    import tensorflow as tf

    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2
        )
    except RuntimeError:  # already initialised by an earlier import
        pass


def pytest_configure(config):
    # Only pay for TensorFlow when a collected test needs it; the split must
    # happen before the first op runs, so do it at session start.
    _split_cpu()


@pytest.fixture
def shared_data():
    """Path to ../shared/data; skips the test with a reason when it is absent."""

    def get(relative: str) -> pathlib.Path:
        path = SHARED_DATA / relative
        if not path.exists():
            pytest.skip(f"real data not available: {path} (only on the team's machines)")
        return path

    return get
