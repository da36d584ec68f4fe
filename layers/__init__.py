"""Keras 3 layers written out from the theory, importable on their own.

`from layers import LSTM, MultiHeadAttention, TransformerEncoderBlock`
"""

from layers.learned_positional_embedding import LearnedPositionalEmbedding
from layers.sinusoidal_encoding import SinusoidalPositionalEncoding
from layers.token_and_position_embedding import TokenAndPositionEmbedding
from layers.conv_block import ConvBlock
from layers.patch_embedding import PatchEmbedding
from layers.unet_blocks import DownBlock, UpBlock
