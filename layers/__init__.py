"""Keras 3 layers written out from the theory, importable on their own.

`from layers import LSTM, MultiHeadAttention, TransformerEncoderBlock`
"""

from layers.dropout import Dropout
from layers.learned_positional_embedding import LearnedPositionalEmbedding
from layers.sinusoidal_encoding import SinusoidalPositionalEncoding
from layers.reversible_embedding import ReversibleEmbedding
from layers.token_and_position_embedding import TokenAndPositionEmbedding
from layers.masked_lm_head import MaskedLMHead
from layers.conv_block import ConvBlock
from layers.patch_embedding import PatchEmbedding
from layers.unet_blocks import DownBlock, UpBlock
from layers.masking import causal_mask, masked_softmax, merge_masks, resolve_padding_mask
from layers.scaled_dot_product_attention import (
    ScaledDotProductAttention,
    scaled_dot_product_attention,
)
from layers.additive_attention import AdditiveAttention
from layers.dot_attention import DotAttention
from layers.multi_head_attention import MultiHeadAttention
from layers.linear_attention import LinearAttention
from layers.transformer_encoder import TransformerEncoderBlock
from layers.transformer_decoder import TransformerDecoderBlock
from layers.recurrent_cells import GRUCell, LSTMCell
from layers.rnn import GRU, LSTM, RNN
from layers.bidirectional import Bidirectional
from layers.crf import LinearChainCRF, iob2_allowed_transitions
from layers.char_encoder import CharBiLSTM, CharCNN, char_ids
