"""One export path for every task: the SavedModel and its in-process twin.

A task provides `serving_fn(model)` (raw input tensors -> a dict of readable outputs),
`serving_signature()` (the `tf.TensorSpec`s of its raw inputs, named as CONTRACT.md says) and
`trackables()` (tokenizers, lookup tables: the resources the graph uses besides the model).
`export` writes them as `serving_default`; `serve_in_process` runs the very same function on
the in-process model, which is what the export must reproduce in a fresh process.
"""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf


def export(task, model: keras.Model, path: str) -> None:
    """Writes a SavedModel whose `serving_default` takes the task's raw inputs."""
    archive = keras.export.ExportArchive()
    archive.track(model)
    for trackable in task.trackables():
        archive.track(trackable)
    archive.add_endpoint("serving_default", task.serving_fn(model),
                         input_signature=task.serving_signature())
    # More signatures where a task has them (image_text: embed_image, embed_text).
    extra = getattr(task, "extra_signatures", None)
    for name, (fn, specs) in (extra(model) if extra else {}).items():
        archive.add_endpoint(name, fn, input_signature=specs)
    archive.write_out(str(path), verbose=False)


def serve_in_process(task, model: keras.Model, inputs,
                     signature: str = "serving_default") -> dict[str, np.ndarray]:
    """What `serving_default` (or the task's extra `signature`) returns for `inputs` (a list
    for one input, a dict of lists by input name for several), with the in-process model."""
    if signature == "serving_default":
        serve, specs = task.serving_fn(model), task.serving_signature()
    else:
        serve, specs = task.extra_signatures(model)[signature]
    fn = tf.function(serve, input_signature=specs, reduce_retracing=True, autograph=False)
    if isinstance(inputs, dict):
        args = [tf.constant(inputs[spec.name], spec.dtype) for spec in specs]
    else:
        args = [tf.constant(inputs, specs[0].dtype)]
    return {name: value.numpy() for name, value in fn(*args).items()}
