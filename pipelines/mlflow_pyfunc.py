"""The MLflow `pyfunc` flavour of an exported SavedModel: raw input in a pandas column, readable
output back.

Logged as an MLflow "model from code": MLflow copies this file into the logged model, so
loading it needs `mlflow`, `pandas` and `tensorflow` (plus `tensorflow_text` where the export
uses its ops) but never this package. Keep it free of `pipelines` imports.

    model = mlflow.pyfunc.load_model("models:/sentiment-lstm/1")
    model.predict(pd.DataFrame({"text": ["a fine film", "dull"]}))
    #       label          probabilities
    # 0  positive  [0.12, 0.88]
"""
from __future__ import annotations

import mlflow.pyfunc
import pandas as pd
from mlflow.models import set_model


def _decode(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def _column(values) -> list:
    """One output tensor as a pandas-friendly column: strings decoded, rows as lists."""
    import numpy as np

    values = np.asarray(values)
    rows = _decode(values.tolist())
    if values.dtype == object and values.ndim == 2:
        # Padded token rows ([B, T] with "" after the end): drop the padding.
        rows = [[v for v in row if v != ""] for row in rows]
    return rows


class SavedModelPyfunc(mlflow.pyfunc.PythonModel):
    """Calls the SavedModel's `serving_default` on the input DataFrame's column(s).

    The column names are the signature's input names (`text`, `image_bytes`); a DataFrame with
    a single column of another name, a list, or a Series feeds a single-input signature.
    """

    def load_context(self, context):
        import tensorflow as tf

        try:  # WordPiece/regex ops of keras-hub tokenizers; absent for core-ops exports
            import tensorflow_text  # noqa: F401
        except ImportError:
            pass
        self._loaded = tf.saved_model.load(context.artifacts["saved_model"])
        self._serve = self._loaded.signatures["serving_default"]
        self._specs = self._serve.structured_input_signature[1]

    # The DataFrame hint tells MLflow to take the signature from the input example.
    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        import tensorflow as tf

        if isinstance(model_input, dict):
            model_input = pd.DataFrame(model_input)
        elif not isinstance(model_input, pd.DataFrame):
            model_input = pd.DataFrame({next(iter(self._specs)): list(model_input)})
        feed = {}
        for name, spec in self._specs.items():
            if name in model_input.columns:
                column = model_input[name]
            elif len(self._specs) == 1 and len(model_input.columns) == 1:
                column = model_input.iloc[:, 0]
            else:
                raise ValueError(f"the model expects a column named {name!r}; received columns "
                                 f"{list(model_input.columns)}")
            feed[name] = tf.constant(column.tolist(), dtype=spec.dtype)
        outputs = self._serve(**feed)
        return pd.DataFrame({name: _column(tensor.numpy()) for name, tensor in outputs.items()})


set_model(SavedModelPyfunc())
