"""Models: the backbone, the causal LM, masked LM and classifier heads, the founding example,
and the image models built from the same Transformer block."""

from keras_llm.models.backbone import TransformerBackbone
from keras_llm.models.causal_lm import CausalLM
from keras_llm.models.classifier import Classifier, SequencePooling
from keras_llm.models.founding import founding_example
from keras_llm.models.masked_lm import MaskedLM
from keras_llm.models.vision import ImageBackbone, ImageCaptioner, ImageClassifier

__all__ = [
    "CausalLM",
    "Classifier",
    "ImageBackbone",
    "ImageCaptioner",
    "ImageClassifier",
    "MaskedLM",
    "SequencePooling",
    "TransformerBackbone",
    "founding_example",
]
