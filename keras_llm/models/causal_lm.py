"""The causal language model: a backbone with a next-token head."""

import keras

from keras_llm.models import generation
from keras_llm.models.language_model import LanguageModel, backbone_config


@keras.saving.register_keras_serializable(package="keras_llm")
class CausalLM(LanguageModel):
    """Next-token logits `(batch, seq, vocabulary_size)` from a `TransformerBackbone`.

    The head is the transposed token embedding when the backbone's config has
    `tie_embeddings=True`, else a `Dense(vocabulary_size)`. Trains with `compile` + `fit` on
    `(ids, next_ids)`; padding (label 0) does not count in the loss: `compile()` defaults to
    `TokenCrossEntropy`, i.e. `SparseCategoricalCrossentropy(from_logits=True,
    ignore_class=0)` computed as one fused XLA step.

    Args:
        backbone: `TransformerBackbone`.

    Example:
    >>> lm = CausalLM(TransformerBackbone(ModelConfig.preset("tiny")))
    >>> lm.compile(optimizer="adam")
    >>> lm.fit(ids[:, :-1], ids[:, 1:], epochs=1)
    """

    def __init__(self, backbone, **kwargs):
        config = backbone_config("CausalLM", backbone)
        if not config.causal or config.norm_position != "pre" or config.embedding_norm:
            raise ValueError(
                "CausalLM needs a GPT-style backbone (causal=True, norm_position='pre', "
                f"embedding_norm=False). Received causal={config.causal}, norm_position="
                f"{config.norm_position!r}, embedding_norm={config.embedding_norm}: a "
                "BERT-style encoder is for Classifier or MaskedLM."
            )
        # === Layers ===
        self.backbone = backbone
        if not config.tie_embeddings:
            self.lm_head = keras.layers.Dense(
                config.vocabulary_size,
                kernel_initializer=keras.initializers.RandomNormal(stddev=0.02),
                name="lm_head",
                dtype=backbone.dtype_policy,
            )

        # === Functional model ===
        token_ids = backbone.input
        hidden = backbone(token_ids)
        if config.tie_embeddings:
            logits = backbone.token_embedding(hidden, reverse=True)
        else:
            logits = self.lm_head(hidden)
        super().__init__(inputs=token_ids, outputs=logits, **kwargs)

    def generate(
        self,
        prompts,
        max_new_tokens=64,
        sampler="greedy",
        temperature=1.0,
        top_k=None,
        top_p=None,
        seed=None,
        stop_at_end=True,
    ):
        """Continues prompts token by token, with a key/value cache (see `generation`).

        Strings in, strings out when `self.tokenizer` is set (each prompt is `[BOS]` + its
        tokens); token ids in, token ids out otherwise. Every output is the prompt followed
        by its continuation (the prompt as the tokenizer gives it back: lowercased and with
        spaced punctuation for an uncased WordPiece tokenizer). Prompts of different lengths
        are decoded in one batch.

        Args:
            prompts: a string or a list of strings (needs `self.tokenizer`); or token ids:
                a list of ints (one prompt), a list of int lists, a 1-D int array, or a 2-D
                int array `(batch, width)` whose trailing zeros are padding.
            max_new_tokens: int. New tokens per prompt; the longest prompt plus
                `max_new_tokens` must fit in `sequence_length`. Defaults to `64`.
            sampler: str. `"greedy"`, `"random"` (softmax of `logits / temperature`),
                `"top_k"` (needs `top_k`) or `"top_p"` (needs `top_p`, optional `top_k`).
                Defaults to `"greedy"`.
            temperature: float > 0. Divides the logits before sampling. Defaults to `1.0`.
            top_k: int. Sample among the `top_k` most likely tokens. Defaults to `None`.
            top_p: float in (0, 1]. Sample in the smallest set of most likely tokens whose
                probability reaches `top_p`. Defaults to `None`.
            seed: int. The same seed gives the same text; `None` draws one from Python's
                `random`. Defaults to `None`.
            stop_at_end: bool. End a prompt's continuation at the end id (`[EOS]`, kept in
                id outputs). Defaults to `True`.

        Returns:
            The same form as `prompts`: str, list of str, list of ids, list of id lists, or
            an int32 array (2-D outputs right-padded with 0).

        Example:
        >>> lm.generate([[2, 17, 40], [2, 9]], max_new_tokens=5)  # ids in, ids out
        >>> lm.tokenizer = tokenizer
        >>> lm.generate("def fibonacci(n):", max_new_tokens=32, sampler="top_p", top_p=0.9)
        """
        return generation.generate(
            self,
            prompts,
            max_new_tokens=max_new_tokens,
            sampler=sampler,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
            stop_at_end=stop_at_end,
        )
