"""Models: the backbone, the causal LM and classifier heads, and the founding example."""

from keras_llm.models.backbone import TransformerBackbone
from keras_llm.models.causal_lm import CausalLM
from keras_llm.models.classifier import Classifier, SequencePooling
from keras_llm.models.founding import founding_example

__all__ = ["CausalLM", "Classifier", "SequencePooling", "TransformerBackbone", "founding_example"]
