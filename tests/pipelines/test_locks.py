"""Retries on "database is locked", the store lock's file, and how a sweeper tells a dead
sweeper's RUNNING trial (re-run it) from a live one's (wait for it)."""
import datetime
import os
import socket
import sqlite3
import subprocess
import sys
import time

import pytest
from optuna.trial import FrozenTrial, TrialState

from pipelines import locks
from pipelines.sweeper import optuna_sweeper
from pipelines.sweeper.optuna_sweeper import OptunaSweeperImpl


class Flaky:
    def __init__(self, failures, error):
        self.failures, self.error, self.calls = failures, error, 0

    def __call__(self, value):
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return value


def _wrapped_locked():
    try:
        raise sqlite3.OperationalError("database is locked")
    except sqlite3.OperationalError as cause:
        try:
            raise RuntimeError("(sqlalchemy) something failed") from cause
        except RuntimeError as error:
            return error


def test_retry_locked_retries_a_locked_database_and_returns(monkeypatch):
    monkeypatch.setattr(locks.time, "sleep", lambda seconds: None)
    flaky = Flaky(3, _wrapped_locked())  # the marker is in the cause, as Optuna wraps it
    assert locks.retry_locked(flaky, 7) == 7 and flaky.calls == 4


def test_retry_locked_raises_other_errors_at_once_and_the_last_locked_one(monkeypatch):
    monkeypatch.setattr(locks.time, "sleep", lambda seconds: None)
    other = Flaky(1, ValueError("no such table"))
    with pytest.raises(ValueError):
        locks.retry_locked(other, 1)
    assert other.calls == 1
    always = Flaky(99, sqlite3.OperationalError("database is locked"))
    with pytest.raises(sqlite3.OperationalError):
        locks.retry_locked(always, 1, attempts=4)
    assert always.calls == 4


def test_store_lock_sits_beside_a_sqlite_file(tmp_path):
    assert locks.sqlite_path(f"sqlite:///{tmp_path}/optuna.db") == tmp_path / "optuna.db"
    assert locks.sqlite_path("postgresql://u@db/optuna") is None
    with locks.store_lock(f"sqlite:///{tmp_path}/optuna.db"):
        assert (tmp_path / "optuna.db.lock").exists()
    with locks.store_lock("postgresql://u@db/optuna", fallback=tmp_path / "sweep" / ".lock"):
        assert (tmp_path / "sweep" / ".lock").exists()


def _running(user_attrs, started=None):
    now = datetime.datetime.now()
    return FrozenTrial(number=0, state=TrialState.RUNNING, value=None, values=None,
                       datetime_start=started or now, datetime_complete=None, params={},
                       distributions={}, user_attrs=user_attrs, system_attrs={},
                       intermediate_values={}, trial_id=0)


def test_a_trial_is_stale_when_its_sweeper_is_gone():
    sweeper = OptunaSweeperImpl(heartbeat_interval=5, grace_period=20)
    host, now = socket.gethostname(), time.time()
    me = f"{host}:{optuna_sweeper._process_id(os.getpid())}"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    assert not sweeper._stale(_running({"worker": me}), now)  # alive on this host
    assert sweeper._stale(_running({"worker": f"{host}:{dead}:1"}), now)  # its process is gone
    pid, start = me.split(":")[1:]
    assert sweeper._stale(_running({"worker": f"{host}:{pid}:{int(start) + 1}"}), now)  # reused
    assert sweeper._stale(_running({}), now)  # an older sweeper's trial: nobody runs it
    other = "node-17.cluster:4242:99"  # another host: its heartbeat decides
    assert not sweeper._stale(_running({"worker": other, "heartbeat": now - 10}), now)
    assert sweeper._stale(_running({"worker": other, "heartbeat": now - 30}), now)
    long_ago = datetime.datetime.now() - datetime.timedelta(minutes=5)
    assert sweeper._stale(_running({"worker": other}, started=long_ago), now)


def test_heartbeat_interval_must_be_below_the_grace_period():
    with pytest.raises(ValueError, match="heartbeat_interval=30.*grace_period=10"):
        OptunaSweeperImpl(heartbeat_interval=30, grace_period=10)
