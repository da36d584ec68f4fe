"""Keras 3 layers written out from the theory, importable on their own.

`from layers import LSTM, MultiHeadAttention, TransformerEncoderBlock`
"""
