"""Layers: embedding, image patches, attention written out by hand, the Transformer block."""

from keras_llm.layers.attention import ExplicitMultiHeadAttention, causal_mask
from keras_llm.layers.embedding import TokenAndPositionEmbedding
from keras_llm.layers.patches import PatchEmbedding
from keras_llm.layers.transformer import TransformerBlock

__all__ = [
    "ExplicitMultiHeadAttention",
    "PatchEmbedding",
    "TokenAndPositionEmbedding",
    "TransformerBlock",
    "causal_mask",
]
