"""Declarative deep-learning pipelines for Keras 3 on TensorFlow.

`python -m pipelines task=TASK model=MODEL` composes a config from conf/ and calls
`pipelines.run.run(cfg)`. Importing this package does not import TensorFlow.
"""
__version__ = "0.1.0"
