"""Ratio benchmarks of our layers against their Keras / keras-hub references."""
