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
    archive.write_out(str(path), verbose=False)


def serve_in_process(task, model: keras.Model, inputs) -> dict[str, np.ndarray]:
    """What `serving_default` returns for `inputs` (a list for one input, a dict of lists by
    input name for several), computed with the in-process model."""
    specs = task.serving_signature()
    fn = tf.function(task.serving_fn(model), input_signature=specs, reduce_retracing=True)
    if isinstance(inputs, dict):
        args = [tf.constant(inputs[spec.name], spec.dtype) for spec in specs]
    else:
        args = [tf.constant(inputs, specs[0].dtype)]
    return {name: value.numpy() for name, value in fn(*args).items()}
