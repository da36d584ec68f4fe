"""`python -m pipelines.compare --experiment NAME [--tracking-uri URI] [--metric M] [--plot FILE.png]`

Prints the runs of an MLflow experiment as a table, best first: run name and id, task, model,
the parameters that differ between the runs, the final metrics, status and duration.
`--plot` draws the metric per run (bars) and the validation curves of every run overlaid
(from the per-epoch metric history). Sweep parent runs (no metrics of their own) are left out;
`--sweep ID` keeps only the children of one sweep.
"""
from __future__ import annotations

import argparse
import math
import sys

from pipelines.tracking import OBJECTIVE_TAG, check_reachable, objective, resolve_tracking_uri

# Per-epoch and bookkeeping metrics: not "final metrics" in the table.
EPOCH_PREFIXES = ("train_", "val_")
NOT_FINAL = {"epoch_seconds", "learning_rate", "parameters", "train_seconds"}
# Params that always differ or say nothing about the model: never "key params".
IGNORED_PARAMS = ("logger.", "hydra.", "task.name", "model.name")  # the last two have columns


def lower_is_better(metric: str) -> bool:
    return any(word in metric for word in ("loss", "error", "seconds", "perplexity"))


def _short(value: str, width: int = 24) -> str:
    return value if len(value) <= width else value[: width - 1] + "…"


def _number(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if abs(value) >= 1000 or float(value).is_integer():
        return f"{value:.0f}"
    return f"{value:.4f}"


def _duration(run) -> float | None:
    if run.info.end_time and run.info.start_time:
        return (run.info.end_time - run.info.start_time) / 1000.0
    return None


def load_runs(client, experiment: str, sweep: str | None = None, max_runs: int = 1000) -> list:
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = sorted(e.name for e in client.search_experiments())
        raise SystemExit(f"no MLflow experiment named {experiment!r}; experiments: "
                         f"{', '.join(names) or 'none'}")
    runs = client.search_runs([found.experiment_id], max_results=max_runs)
    runs = [r for r in runs if r.data.tags.get("sweep_parent") != "true"]
    if sweep:
        runs = [r for r in runs if r.data.tags.get("sweep_id") == sweep
                or r.data.tags.get("mlflow.parentRunId") == sweep]
    return runs


def default_metric(runs: list) -> str | None:
    """The runs' objective (tag `objective_metric`), else `tracking.objective` of the first
    run's final metrics."""
    for run in runs:
        if OBJECTIVE_TAG in run.data.tags:
            return run.data.tags[OBJECTIVE_TAG]
    finals = {m: v for r in runs for m, v in r.data.metrics.items() if m not in NOT_FINAL
              and not m.startswith(EPOCH_PREFIXES)}
    return objective(finals)[0] if finals else None


def differing_params(runs: list) -> list[str]:
    keys = sorted({k for r in runs for k in r.data.params if not k.startswith(IGNORED_PARAMS)})
    return [k for k in keys if len({r.data.params.get(k) for r in runs}) > 1]


def final_metrics(runs: list, metric: str | None) -> list[str]:
    names = sorted({m for r in runs for m in r.data.metrics
                    if m not in NOT_FINAL and not m.startswith(EPOCH_PREFIXES)})
    if metric:
        names = [metric] + [m for m in names if m != metric]
    return names


def rank(runs: list, metric: str | None, ascending: bool | None = None) -> list:
    """Best first; runs without the metric last."""
    if not metric:
        return list(runs)
    ascending = lower_is_better(metric) if ascending is None else ascending
    with_metric = [r for r in runs if metric in r.data.metrics]
    without = [r for r in runs if metric not in r.data.metrics]
    with_metric.sort(key=lambda r: r.data.metrics[metric], reverse=not ascending)
    return with_metric + without


def table(runs: list, metric: str | None) -> tuple[list[str], list[list[str]]]:
    params = differing_params(runs)
    metrics = final_metrics(runs, metric)
    header = ["run", "run_id", "task", "model", *params, *metrics, "status", "duration_s"]
    rows = []
    for run in runs:
        tags = run.data.tags
        duration = _duration(run)
        rows.append([
            _short(run.info.run_name or ""), run.info.run_id[:8], tags.get("task", "-"),
            tags.get("model", "-"), *(_short(run.data.params.get(p, "-")) for p in params),
            *(_number(run.data.metrics.get(m)) for m in metrics), run.info.status,
            "-" if duration is None else f"{duration:.0f}",
        ])
    return header, rows


def format_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def plot(client, runs: list, metric: str, path: str) -> None:
    """Bars of `metric` per run, and each run's validation curves overlaid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    monitors = []
    for run in runs:
        monitor = run.data.params.get("task.monitor", "val_loss")
        if monitor not in monitors:
            monitors.append(monitor)
    curves = ["val_loss"] + [m for m in monitors if m != "val_loss"]
    fig, axes = plt.subplots(1, 1 + len(curves), figsize=(5 * (1 + len(curves)), 4), squeeze=False)
    labels = [f"{r.info.run_name or r.info.run_id[:8]}" for r in runs]
    values = [r.data.metrics.get(metric, float("nan")) for r in runs]
    bars = axes[0][0]
    bars.bar(range(len(runs)), values, color="tab:blue")
    bars.set_xticks(range(len(runs)), labels, rotation=45, ha="right", fontsize=8)
    bars.set_title(f"{metric} (best first)")
    bars.grid(axis="y", alpha=0.3)
    for ax, name in zip(axes[0][1:], curves):
        for run, label in zip(runs, labels):
            history = sorted(client.get_metric_history(run.info.run_id, name), key=lambda m: m.step)
            if history:
                ax.plot([m.step for m in history], [m.value for m in history], marker="o",
                        label=label)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_title(f"{name} per epoch")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", required=True, help="MLflow experiment name")
    parser.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else "
                        "sqlite:///mlflow.db in the working directory (as training uses)")
    parser.add_argument("--metric", help="rank by this metric (default: the runs' objective, "
                        "the task's first metric)")
    order = parser.add_mutually_exclusive_group()
    order.add_argument("--lower-is-better", dest="ascending", action="store_true", default=None)
    order.add_argument("--higher-is-better", dest="ascending", action="store_false")
    parser.add_argument("--sweep", help="only the child runs of this sweep (its parent run id)")
    parser.add_argument("--max-runs", type=int, default=1000)
    parser.add_argument("--plot", metavar="FILE.png", help="also draw the metric per run and the "
                        "validation curves overlaid")
    args = parser.parse_args(argv)

    from mlflow import MlflowClient

    uri = resolve_tracking_uri(args.tracking_uri)
    try:
        check_reachable(uri)
    except ConnectionError as error:
        print(error, file=sys.stderr)
        return 2
    client = MlflowClient(tracking_uri=uri)
    runs = load_runs(client, args.experiment, args.sweep, args.max_runs)
    if not runs:
        print(f"experiment {args.experiment!r} has no runs", file=sys.stderr)
        return 1
    metric = args.metric or default_metric(runs)
    runs = rank(runs, metric, args.ascending)
    print(f"experiment {args.experiment!r} at {uri}: {len(runs)} runs, best first by "
          f"{metric or '(no metric)'}")
    print(format_table(*table(runs, metric)))
    if args.plot:
        plot(client, runs, metric, args.plot)
        print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
