"""`python -m pipelines.predict SAVED_MODEL INPUT...`: one JSON object per input.

INPUT is a text, or an image path for models whose signature takes `image_bytes`.
Only TensorFlow (and tensorflow_text, when installed, for its ops) is needed.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _to_python(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if hasattr(value, "tolist"):
        return _to_python(value.tolist())
    if isinstance(value, list):
        return [_to_python(v) for v in value]
    return value


def predict(saved_model: str, inputs: list[str], labels: list[str] | None = None) -> list[dict]:
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
        {"input": item, **({"labels": labels} if extra else {}),
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
    args = parser.parse_args(argv)
    if not os.path.isdir(args.saved_model):
        parser.error(f"{args.saved_model} is not a SavedModel directory")
    labels = [label.strip() for label in args.labels.split(",")] if args.labels else None
    for row in predict(args.saved_model, args.inputs, labels):
        print(json.dumps(row, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
