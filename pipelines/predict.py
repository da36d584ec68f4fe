"""`python -m pipelines.predict SAVED_MODEL INPUT...`: one JSON object per input.

INPUT is a text, or an image path for models whose signature takes `image_bytes`. A
signature with more inputs gets the others from `--feed NAME=VALUE`: given once, the value
goes with every INPUT; given once per INPUT, in order (task=visual_qa:
`python -m pipelines.predict run/saved_model scene.png --feed question="how many circles?"`).
Only TensorFlow (and tensorflow_text, when installed, for its ops) is needed.
"""
from __future__ import annotations

import argparse
import json
import os
import sys


def _to_python(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if hasattr(value, "tolist"):
        return _to_python(value.tolist())
    if isinstance(value, list):
        return [_to_python(v) for v in value]
    return value


def _fed(feed: dict[str, list[str]], names: set[str], count: int, saved_model: str) -> dict:
    """{input name: one value per INPUT} from `--feed NAME=VALUE` (one value: for every INPUT)."""
    unknown = sorted(set(feed) - names)
    if unknown:
        raise SystemExit(f"{saved_model} has no input {', '.join(unknown)}; its inputs: "
                         f"{', '.join(sorted(names))}")
    for name, values in feed.items():
        if len(values) not in (1, count):
            raise SystemExit(f"--feed {name}=... given {len(values)} times; give it once (for "
                             f"every input) or once per input ({count})")
    return {name: values * count if len(values) == 1 else values
            for name, values in feed.items()}


def predict(saved_model: str, inputs: list[str], labels: list[str] | None = None,
            feed: dict[str, list[str]] | None = None) -> list[dict]:
    from pipelines.logs import quiet_tensorflow

    with quiet_tensorflow():  # no absl / CUDA-probe chatter unless PIPELINES_TF_LOGS=1
        import tensorflow as tf

        try:
            import tensorflow_text  # noqa: F401 - registers ops some exported tokenizers use
        except ImportError:
            pass
    loaded = tf.saved_model.load(saved_model)
    serve = loaded.signatures["serving_default"]
    names = set(serve.structured_input_signature[1].keys())
    extra = {}
    if "labels" in names:  # zero-shot (image_text): the candidate labels of every input
        if not labels:
            raise SystemExit(f"{saved_model} classifies against labels: pass --labels a,b,...")
        extra = {"labels": tf.constant(labels)}
        names.discard("labels")
    elif labels:
        raise SystemExit(f"{saved_model} takes no labels; drop --labels")
    fed = _fed(feed or {}, names, len(inputs), saved_model)
    extra.update({name: tf.constant(values) for name, values in fed.items()})
    names -= set(fed)
    if not names:
        raise SystemExit(f"--feed gave every input of {saved_model}; the INPUTs feed one of them")
    if len(names) > 1:  # the INPUTs feed the image (or text); the others need --feed
        primary = "image_bytes" if "image_bytes" in names else "text"
        missing = sorted(names - {primary})
        raise SystemExit(f"{saved_model} also takes {', '.join(missing)}: pass "
                         + " ".join(f"--feed {name}=VALUE" for name in missing))
    (input_name,) = names
    if input_name == "image_bytes":
        batch = []
        for path in inputs:
            with open(path, "rb") as handle:
                batch.append(handle.read())
    else:
        batch = inputs
    outputs = serve(**{input_name: tf.constant(batch)}, **extra)
    outputs = {k: v.numpy() for k, v in outputs.items()}
    return [
        {"input": item, **({"labels": labels} if labels else {}),
         **{name: values[i] for name, values in fed.items()},
         **{k: _to_python(v[i]) for k, v in sorted(outputs.items())}}
        for i, item in enumerate(inputs)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("saved_model", help="the run's saved_model/ directory")
    parser.add_argument("inputs", nargs="+", help="texts, or image paths")
    parser.add_argument("--labels", default=None,
                        help="comma-separated candidate labels, for zero-shot models "
                             "(task=image_text): --labels cat,dog")
    parser.add_argument("--feed", action="append", default=[], metavar="NAME=VALUE",
                        help="a value of another input of the signature, for models with "
                             "several (task=visual_qa: --feed question='how many circles?'); "
                             "once for every INPUT, or once per INPUT in order")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.saved_model):
        parser.error(f"{args.saved_model} is not a SavedModel directory")
    labels = [label.strip() for label in args.labels.split(",")] if args.labels else None
    feed: dict[str, list[str]] = {}
    for item in args.feed:
        name, equals, value = item.partition("=")
        if not equals or not name.strip():
            parser.error(f"--feed takes NAME=VALUE; received {item!r}")
        feed.setdefault(name.strip(), []).append(value)
    for row in predict(args.saved_model, args.inputs, labels, feed):
        print(json.dumps(row, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
