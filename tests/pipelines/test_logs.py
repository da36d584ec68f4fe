"""Quiet logs: what `quiet_tensorflow()` drops from fd 2 while TensorFlow loads, and what not.

Each case runs in a fresh interpreter without TensorFlow (the filter only acts on the first
import), writing absl-style lines straight to file descriptor 2, as the C++ libraries do.
"""
import logging
import os
import re
import subprocess
import sys

import pytest

from pipelines.logs import is_chatter
from tests.conftest import REPO

LOADING = (b"WARNING: All log messages before absl::InitializeLog() is called are written to "
           b"STDERR\n"
           b"I0000 00:00:1796194136.950312   23007 port.cc:153] oneDNN custom operations are on.\n"
           b"W0000 00:00:1796194136.950614   23007 cudart_stub.cc:31] Could not find cuda drivers\n"
           b"E0000 00:00:1796194137.017077   23007 cuda_platform.cc:52] failed call to cuInit\n"
           b"F0000 00:00:1796194137.100000   23007 x.cc:1] a fatal line stays\n"
           b"a line of our own\n")
SCRIPT = ("import os, sys\n"
          "from pipelines.logs import quiet_tensorflow\n"
          "with quiet_tensorflow():\n"
          "    os.write(2, sys.stdin.buffer.read())\n"
          "    print('python stderr', file=sys.stderr)\n")


def _stderr(**env) -> list[str]:
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("TF_CPP_MIN_LOG_LEVEL", "PIPELINES_TF_LOGS")}
    result = subprocess.run([sys.executable, "-c", SCRIPT], input=LOADING,
                            env={**environment, **env}, capture_output=True, cwd=REPO,
                            timeout=60, check=True)
    return result.stderr.decode().splitlines()


@pytest.mark.parametrize("env,kept", [
    ({}, ["F0000", "a line of our own", "python stderr"]),  # default: level 3
    ({"TF_CPP_MIN_LOG_LEVEL": "2"}, ["E0000", "F0000", "a line of our own", "python stderr"]),
    ({"TF_CPP_MIN_LOG_LEVEL": "0"}, ["WARNING", "I0000", "W0000", "E0000", "F0000",
                                     "a line of our own", "python stderr"]),
    ({"PIPELINES_TF_LOGS": "1"}, ["WARNING", "I0000", "W0000", "E0000", "F0000",
                                  "a line of our own", "python stderr"]),
])
def test_loading_lines_below_the_level_are_dropped_the_rest_kept_in_order(env, kept):
    # An absl line is named by its first word (its severity and date, or WARNING:).
    assert [line.split()[0].rstrip(":") if re.match(r"[IWEF]\d{4} |WARNING:", line) else line
            for line in _stderr(**env)] == kept


def test_only_absl_shaped_lines_are_chatter():
    assert is_chatter(b"E1202 06:45:49.017077   20858 cuda_platform.cc:52] failed call", 3)
    assert not is_chatter(b"E1202 06:45:49.017077   20858 cuda_platform.cc:52] failed call", 2)
    assert not is_chatter(b"Error: data.train=x.txt: no such file", 3)
    assert not is_chatter(b"I1 are not a log line", 3)
    sentencepiece = b"normalizer.cc(51) LOG(INFO) precompiled_charsmap is empty. use identity"
    assert is_chatter(sentencepiece, 1) and not is_chatter(sentencepiece, 0)
    assert not is_chatter(b"model.cc(1) LOG(ERROR) bad model", 2)


def test_the_sentencepiece_kernel_loads_its_model_without_a_line(capfd, monkeypatch):
    from pipelines.tasks.generation import _sentencepiece_server, learn_sentencepiece

    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    monkeypatch.delenv("PIPELINES_TF_LOGS", raising=False)
    model = learn_sentencepiece(["a quiet corpus of its own, seen once"] * 20, 40)
    capfd.readouterr()
    tokens = _sentencepiece_server(model).tokenize(["quiet"])
    assert tokens.shape[0] == 1 and capfd.readouterr().err == ""


def test_the_trainers_bucket_retracing_warning_is_dropped_others_kept():
    from pipelines.logs import drop_bucket_retracing

    def record(message):
        return logging.LogRecord("tensorflow", logging.WARNING, __file__, 1, message, None, None)

    bucketed = ("5 out of the last 24 calls to <function Trainer._distributed.<locals>.step at "
                "0x7f> triggered tf.function retracing. Tracing is expensive ...")
    assert not drop_bucket_retracing(record(bucketed))
    assert drop_bucket_retracing(record(bucketed.replace("Trainer.", "my_function.")))
    assert drop_bucket_retracing(record("Assets written to: run/saved_model/assets"))
