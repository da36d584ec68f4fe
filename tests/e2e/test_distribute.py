"""Strategies through the real CLI: two workers on loopback, and a TPU request without a TPU."""
import json
import os
import socket
import subprocess
import sys

import tensorflow as tf

from tests.conftest import REPO


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def test_multi_worker_two_processes_train_from_tfrecord_shards_by_file_and_only_the_chief_exports(
        tmp_path):
    # The path for large corpora: shards written once by pipelines.prepare, streamed, each
    # worker reading its own files (tf.data's FILE auto-shard policy: 4 shards, 2 workers).
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("TF_CONFIG", None)
    shards = tmp_path / "shards"
    prepared = subprocess.run(
        [sys.executable, "-m", "pipelines.prepare", "task=sentiment", "data=synthetic",
         f"data.out={shards}", "data.shards=4"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    workers = ",".join(f"127.0.0.1:{port}" for port in _free_ports(2))
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "pipelines", "task=sentiment", "model=lstm", "debug=smoke",
             "data=tfrecord", f"data.path={shards}", "data.streaming=true", "data.limit=null",
             "logger=none", "distribute=multi_worker", f"distribute.workers=[{workers}]",
             f"distribute.task_index={index}", f"hydra.run.dir={tmp_path / f'worker{index}'}"],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for index in range(2)
    ]
    outputs = [process.communicate(timeout=300)[0] for process in processes]
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output[-3000:]
    chief, worker = tmp_path / "worker0", tmp_path / "worker1"
    assert (chief / "saved_model" / "saved_model.pb").exists()
    assert not (worker / "saved_model").exists() and not (worker / "metrics.json").exists()
    assert "replicas=2 global batch=16 (per replica 8)" in outputs[0]
    for output in outputs:
        assert "streaming 4 file(s) sharded by file across 2 workers" in output, output[-3000:]
    # One model trained in lockstep: the workers evaluate the same weights.
    last = [line for line in outputs[1].splitlines() if line.startswith("{")][-1]
    assert json.loads(last) == json.loads((chief / "metrics.json").read_text())
    serve = tf.saved_model.load(str(chief / "saved_model")).signatures["serving_default"]
    assert serve(text=tf.constant(["a fine film"]))["label"].shape == (1,)


def test_tpu_without_a_tpu_fails_at_once_with_the_fix(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pipelines", "task=sentiment", "model=lstm", "debug=smoke",
         "logger=none", "distribute=tpu", f"hydra.run.dir={tmp_path}"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0
    assert "distribute=tpu: no TPU found" in result.stderr
    assert "distribute=default|mirrored" in result.stderr
    assert not (tmp_path / "checkpoints").exists()
