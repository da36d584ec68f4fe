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


# ----------------------------------------------------------------------------- profiles
# Substrings of the matmul op types: TF's (_MklMatMul, Einsum, ...) and XLA's (HLO dot).
MATMUL_TYPES = ("MatMul", "Einsum", "Conv", "dot", "onednn")


def is_matmul(kind):
    return any(part in kind for part in MATMUL_TYPES)


def op_times(logdir, hlo_dir=None):
    """{(op name, op type): summed microseconds} of the ops in a tf.profiler trace.

    Reads the host plane of the XSpace. In graph mode the TF ops are the events whose
    display name is their type (the rest is executor and threadpool bookkeeping).
    Under XLA the events are HLO instructions (with `--xla_cpu_enable_xprof_traceme`);
    each is named after the TF op it came from through the `op_name` metadata of the
    optimised HLO that `--xla_dump_to=hlo_dir` wrote for the traced function.
    """
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    totals, hlo_names = {}, {}
    for path in pathlib.Path(logdir).rglob("*.xplane.pb"):
        space = xplane_pb2.XSpace()
        space.ParseFromString(path.read_bytes())
        for plane in space.planes:
            if not plane.name.startswith("/host:CPU"):
                continue
            for line in plane.lines:
                if line.name == "python" and hlo_dir:
                    hlo_names.update(_hlo_op_names(plane, line, hlo_dir))
            for line in plane.lines:
                if line.name == "python":
                    continue
                end = -1  # of the last counted event: ops inside it (an XLA call) are in it
                for event in sorted(line.events, key=lambda event: event.offset_ps):
                    meta = plane.event_metadata[event.metadata_id]
                    if event.offset_ps < end:
                        continue
                    if meta.display_name:  # a TF op: "name:type"
                        key = (meta.name.rpartition(":")[0], meta.display_name)
                    elif meta.name in hlo_names:  # an HLO instruction
                        key = hlo_names[meta.name]
                    else:  # executor and threadpool bookkeeping
                        continue
                    totals[key] = totals.get(key, 0.0) + event.duration_ps / 1e6
                    end = event.offset_ps + event.duration_ps
    return totals


def _hlo_op_names(plane, line, hlo_dir):
    """{HLO instruction: (TF op name, "HLO " + opcode)} of the traced train step."""
    import re

    functions = {
        plane.event_metadata[event.metadata_id].name.split(": ")[-1]
        for event in line.events
        if plane.event_metadata[event.metadata_id].name.startswith("EagerLocalExecute: ")
    }
    instruction = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = .*? (\w[\w-]*)\(")
    op_name = re.compile(r'op_name="([^"]*)"')
    calls = re.compile(r"(?:calls|to_apply)=%?([\w.\-]+)")
    operand = re.compile(r"%([\w.\-]+)")
    computation = re.compile(r"^%?([\w.\-]+) .*\{$")
    names = {}
    for path in pathlib.Path(hlo_dir).glob("*cpu_after_optimizations.txt"):
        if not any(f"{function.lstrip('_')}__" in path.name for function in functions):
            continue  # the dump names "__inference_f_12" "a_inference_f_12__..."
        # An instruction without metadata (most fusions, and the ops of the computation
        # an RNG `call` runs) is named by the first named op inside its fused
        # computation, else by the instruction that calls its computation, else by its
        # first named user.
        first_in, caller, unnamed, users, where = {}, {}, [], {}, {}
        current = None
        for text in path.read_text().splitlines():
            head = computation.match(text)
            if head and not text.startswith(" "):
                current = head.group(1)
                continue
            match = instruction.match(text)
            if not match:
                continue
            name, named, called = match.group(1), op_name.search(text), calls.search(text)
            where[name] = current
            arguments = text.split("(", 1)[1] if "(" in text else ""
            for used in operand.findall(arguments):
                users.setdefault(used, []).append(named.group(1) if named else None)
            if named:
                names[name] = (named.group(1), "HLO " + match.group(2))
                first_in.setdefault(current, named.group(1))
                if called:
                    caller[called.group(1)] = named.group(1)
            else:
                unnamed.append((name, match.group(2), called.group(1) if called else None))
        for name, opcode, called in unnamed:
            choice = first_in.get(called) or caller.get(where[name]) or next(
                (user for user in users.get(name, []) if user), "unnamed")
            names[name] = (choice, "HLO " + opcode)
    return names


def traced_op_times(run, logdir, steps=3, hlo_dir=None):
    """{(op name, op type): microseconds} of `run(steps)` traced by tf.profiler into
    `logdir`, after one untraced-for-timing `run(1)` (the first trace pays set-up costs)."""
    import tensorflow as tf

    tf.profiler.experimental.start(logdir + "_warmup")
    run(1)
    tf.profiler.experimental.stop()
    tf.profiler.experimental.start(logdir)
    run(steps)
    tf.profiler.experimental.stop()
    return op_times(logdir, hlo_dir)
