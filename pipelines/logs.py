"""Quiet logs: no line from absl or the TensorFlow C++ runtime at the default verbosity.

TensorFlow speaks through three channels; each is quietened where it starts:
- the C++ runtime logs through absl, filtered by `TF_CPP_MIN_LOG_LEVEL`. We default it to 3
  (fatal lines only). That hides "failed call to cuInit" on a machine without a GPU driver
  and oneDNN fallback notices. Only lines go: every GPU stays visible and used.
- while TensorFlow's libraries load, absl is not initialised yet and writes every line to
  file descriptor 2, whatever the level: "WARNING: All log messages before
  absl::InitializeLog() ...", "oneDNN custom operations are on", "Could not find cuda
  drivers". `quiet_tensorflow()` holds fd 2 while TensorFlow is imported and drops those
  lines when they are below the level; any other output is written back.
- TensorFlow's Python code logs INFO through the `absl` and `tensorflow` loggers ("Sharding
  callback duration" at every checkpoint save, "Assets written to"); these go to WARNING,
  and the trainer's retracing warning, which length bucketing triggers by design (one trace
  per bucket shape), is dropped.

tensorflow-text's SentencePiece kernel logs through SentencePiece's own C++ logging, straight
to fd 2 ("normalizer.cc(51) LOG(INFO) precompiled_charsmap is empty"); `native_lines_dropped()`
holds fd 2 around the call that creates the kernel's model (`tasks.generation`) and drops
such lines below the level too.

Our own loggers and the Keras progress bar are untouched (`trainer.verbose` turns the bar
off). `PIPELINES_TF_LOGS=1` leaves all three channels as TensorFlow sets them, and a
`TF_CPP_MIN_LOG_LEVEL` the user set wins over our default. That level also decides which
loading lines are dropped. A process killed inside the import (SIGILL on a CPU that lacks
an instruction set the wheel needs, say) loses what fd 2 held; PIPELINES_TF_LOGS=1 shows it.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator

QUIET_LEVEL = "3"  # TF_CPP_MIN_LOG_LEVEL: 1 hides INFO, 2 also WARNING, 3 also ERROR
# An absl / glog line: severity, MMDD, hh:mm:ss.micros (absl's seconds run on before
# it is initialised), thread id, file:line].
_ABSL_LINE = re.compile(rb"([IWEF])\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [^\]\n]*\] ")
_PREINIT = b"WARNING: All log messages before absl::InitializeLog() is called"
_SEVERITY = {b"I": 0, b"W": 1, b"E": 2, b"F": 3}
_SENTENCEPIECE_LINE = re.compile(rb"\w+\.cc\(\d+\) LOG\((INFO|WARNING|ERROR)\) ")
_SENTENCEPIECE_SEVERITY = {b"INFO": 0, b"WARNING": 1, b"ERROR": 2}


def tensorflow_logs_wanted() -> bool:
    """True when the user asked for TensorFlow's own logs with PIPELINES_TF_LOGS=1."""
    return os.environ.get("PIPELINES_TF_LOGS", "").strip().lower() not in ("", "0", "false", "no")


def _level() -> int:
    try:
        return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:  # TensorFlow reads an unparsable value as 0
        return 0


def is_chatter(line: bytes, level: int) -> bool:
    """Whether TF_CPP_MIN_LOG_LEVEL=`level` would have hidden `line` had absl been ready."""
    if line.startswith(_PREINIT):
        return level >= 1
    match = _ABSL_LINE.match(line)
    if match is not None:
        return _SEVERITY[match.group(1)] < level
    match = _SENTENCEPIECE_LINE.match(line)
    return match is not None and _SENTENCEPIECE_SEVERITY[match.group(1)] < level


@contextlib.contextmanager
def native_lines_dropped() -> Iterator[None]:
    """Drops the C++ log lines below TF_CPP_MIN_LOG_LEVEL that the block writes to fd 2
    (nothing with PIPELINES_TF_LOGS=1); any other output is written back."""
    if tensorflow_logs_wanted():
        yield
        return
    with _fd2_filtered(_level()):
        yield


@contextlib.contextmanager
def _fd2_filtered(level: int) -> Iterator[None]:
    """Sends fd 2 to a temporary file for the block, then writes back what is not chatter."""
    if level < 1:  # nothing to drop
        yield
        return
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2 at all
        yield
        return
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            kept = [line for line in held.read().splitlines(keepends=True)
                    if not is_chatter(line, level)]
            if kept:
                os.write(2, b"".join(kept))


@contextlib.contextmanager
def quiet_tensorflow() -> Iterator[None]:
    """Wrap the first import of TensorFlow (or of a module that imports it):

        with quiet_tensorflow():
            from pipelines.run import run
    """
    if tensorflow_logs_wanted():
        yield
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", QUIET_LEVEL)
    # Loaded already: its loading lines are gone, nothing to hold.
    with _fd2_filtered(0 if "tensorflow" in sys.modules else _level()):
        yield
    for name in ("absl", "tensorflow"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("tensorflow").addFilter(drop_bucket_retracing)


def drop_bucket_retracing(record: logging.LogRecord) -> bool:
    """False for TensorFlow's "N out of the last M calls to <function ...step> triggered
    tf.function retracing" warning: length bucketing traces the train and evaluation steps
    once per bucket shape by design (static shapes), which is what the warning counts."""
    message = record.getMessage()
    return not ("triggered tf.function retracing" in message and "Trainer." in message)
