"""What the pipeline benchmarks share: configs composed as the tests compose them, the
default model of each task, the `python -m pipelines` smoke command and its peak memory."""
import os
import pathlib
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]

# One model per task: the backbone of the README's main job where there is one.
TASK_MODELS = {
    "sentiment": "lstm",
    "translation": "transformer",
    "ner": "lstm",
    "image_classification": "cnn",
    "segmentation": "unet",
    "captioning": "lstm",
}


def compose_cfg(task, model, *overrides):
    """The config `python -m pipelines task=TASK model=MODEL logger=none ...` would run."""
    from hydra import compose, initialize_config_dir

    from pipelines.config import check, register_schemas

    register_schemas()
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"task={task}", f"model={model}", "logger=none",
                                           "trainer.verbose=false", *overrides])
    check(cfg)
    return cfg


def cpu_model() -> str:
    """The CPU's model name and core count (the machine a benchmark's numbers belong to)."""
    names = [line.split(":", 1)[1].strip()
             for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines()
             if line.startswith("model name")] if pathlib.Path("/proc/cpuinfo").exists() else []
    return f"{names[0] if names else 'unknown CPU'}, {os.cpu_count()} cores"


def print_ratio(label, value):
    """The one line a benchmark is read by: `RATIO label = value`."""
    print(f"RATIO {label} = {value:.2f}", flush=True)


def _vmhwm(pid):
    """The kernel's high-water mark of the process's resident set, bytes (0 once gone)."""
    try:
        for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def run_measured(command, poll=0.2):
    """Runs `command` from the repository root; returns (wall seconds, peak RSS bytes,
    exit code, the end of its output).

    The peak is VmHWM from /proc while the child runs and, at exit, the `ru_maxrss` of that
    one child from wait4 (the same kernel counter, final value): both count TensorFlow's
    native allocations, which Python-level tools such as tracemalloc do not see.
    """
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO))
    with tempfile.TemporaryFile() as log:
        began = time.perf_counter()
        child = subprocess.Popen(command, cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                                 stdout=log, stderr=subprocess.STDOUT)
        peak = 0
        while True:
            done, status, usage = os.wait4(child.pid, os.WNOHANG)
            if done:
                break
            peak = max(peak, _vmhwm(child.pid))
            time.sleep(poll)
        seconds = time.perf_counter() - began
        child.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        tail = log.read().decode(errors="replace")[-2000:]
    return seconds, max(peak, usage.ru_maxrss * 1024), child.returncode, tail


def smoke_command(task, model, run_dir):
    return [sys.executable, "-m", "pipelines", f"task={task}", f"model={model}",
            "debug=smoke", "logger=none", f"hydra.run.dir={run_dir}"]


def run_checked(command, label):
    """`run_measured(command)`, exiting with the end of its output if it failed; returns
    (wall seconds, peak RSS bytes)."""
    seconds, rss, code, tail = run_measured(command)
    if code:
        sys.exit(f"{label} failed (exit {code}):\n{tail}")
    return seconds, rss
