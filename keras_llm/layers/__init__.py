"""Layers: embedding, attention written out by hand, and the Transformer block."""

from keras_llm.layers.attention import ExplicitMultiHeadAttention, causal_mask
from keras_llm.layers.embedding import TokenAndPositionEmbedding
from keras_llm.layers.transformer import TransformerBlock

__all__ = [
    "ExplicitMultiHeadAttention",
    "TokenAndPositionEmbedding",
    "TransformerBlock",
    "causal_mask",
]
