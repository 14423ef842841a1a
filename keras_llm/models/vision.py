"""Transformers on image patches: an image classifier and an image-to-text causal LM.

Both reuse the text models' `TransformerBlock`; only the tokens differ. `PatchEmbedding` turns
an image into a short sequence of patch tokens (16 tokens of 2x2 blocks, or 8 row tokens, for
an 8x8 image).

- `ImageBackbone`: images -> patch tokens -> non-causal blocks -> final norm, hidden states
  `(batch, num_patches, hidden_dim)` (a ViT without a class token).
- `ImageClassifier`: a thin head on it, mean-pooled patches -> `Dense(num_classes)`.
- `ImageCaptioner`: one causal sequence, the image's patch tokens first and the text tokens
  after them, so every text token attends to the whole image and to the words before it.
  Logits come out for the text positions only, so the next-token loss (label 0 ignored)
  never asks the model to predict pixels. `generate(images)` writes text greedily.
"""

import keras
import numpy as np
from keras import ops

from keras_llm.layers import PatchEmbedding, TokenAndPositionEmbedding, TransformerBlock
from keras_llm.models.backbone import with_backbone_deserialized
from keras_llm.models.classifier import SequencePooling, check_num_classes
from keras_llm.models.distribute import MultiWorkerFix
from keras_llm.models.losses import TokenCrossEntropy

START_ID = 2  # the Tokenizer contract's `[BOS]`
END_ID = 3  # the Tokenizer contract's `[EOS]`
PAD_ID = 0


def _image_shape(image_shape):
    shape = tuple(image_shape) if isinstance(image_shape, (list, tuple)) else None
    if shape is None or len(shape) not in (2, 3) or not all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in shape
    ):
        raise ValueError(
            "image_shape must be (height, width) or (height, width, channels) of positive "
            f"ints. Received image_shape={image_shape!r}."
        )
    return tuple(int(v) for v in shape)


def _blocks(num_layers, causal, dtype, **block_args):
    return [
        TransformerBlock(
            num_layers=num_layers, causal=causal, name=f"transformer_block_{i}", dtype=dtype,
            **block_args,
        )
        for i in range(num_layers)
    ]


@keras.saving.register_keras_serializable(package="keras_llm")
class ImageBackbone(keras.Model):
    """Images `(batch, H, W[, C])` -> hidden states `(batch, num_patches, hidden_dim)`.

    `PatchEmbedding` (patches + learned positions) -> `num_layers` non-causal
    `TransformerBlock`s (every patch sees every other) -> final layer norm.

    Args:
        image_shape: tuple. `(height, width)` or `(height, width, channels)`.
        patch_size: int or `(height, width)`. Must divide the image size.
        hidden_dim: int. Width of the residual stream. Defaults to `64`.
        num_heads: int. Attention heads; must divide `hidden_dim`. Defaults to `4`.
        num_layers: int. Transformer blocks. Defaults to `2`.
        intermediate_dim: int. Width of the feed-forward layer. Defaults to `128`.
        dropout: float. Dropout in the blocks and on the patch tokens. Defaults to `0.0`.
        activation: str. Feed-forward activation. Defaults to `"gelu"`.
        initializer: str. `"gpt2"`, `"glorot_uniform"` or `"he_normal"`. Defaults to `"gpt2"`.
        attention: str. `"keras"` or `"explicit"`. Defaults to `"keras"`.

    Example:
    >>> backbone = ImageBackbone(image_shape=(8, 8), patch_size=2, hidden_dim=32, num_heads=2)
    >>> backbone(np.zeros((4, 8, 8), "float32")).shape
    (4, 16, 32)
    """

    def __init__(
        self,
        image_shape,
        patch_size,
        hidden_dim=64,
        num_heads=4,
        num_layers=2,
        intermediate_dim=128,
        dropout=0.0,
        activation="gelu",
        initializer="gpt2",
        attention="keras",
        name="image_backbone",
        dtype=None,
        **kwargs,
    ):
        image_shape = _image_shape(image_shape)
        # === Layers ===
        self.patch_embedding = PatchEmbedding(
            patch_size, hidden_dim, initializer=initializer, name="patch_embedding", dtype=dtype
        )
        self.embedding_dropout = keras.layers.Dropout(
            dropout, name="embedding_dropout", dtype=dtype
        )
        self.transformer_blocks = _blocks(
            num_layers, False, dtype, num_heads=num_heads, intermediate_dim=intermediate_dim,
            dropout=dropout, activation=activation, attention=attention, initializer=initializer,
        )
        self.final_norm = keras.layers.LayerNormalization(
            epsilon=1e-5, name="final_norm", dtype=dtype
        )

        # === Functional model ===
        images = keras.Input(shape=image_shape, name="images")
        x = self.embedding_dropout(self.patch_embedding(images))  # (batch, patches, hidden)
        for block in self.transformer_blocks:
            x = block(x)
        x = self.final_norm(x)
        super().__init__(inputs=images, outputs=x, name=name, dtype=dtype, **kwargs)

        # === Config ===
        self.image_shape = image_shape
        self.patch_size = self.patch_embedding.patch_size
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.num_layers = num_layers
        self.intermediate_dim = intermediate_dim
        self.dropout = dropout
        self.activation = activation
        self.initializer = initializer
        self.attention = attention

    @property
    def num_patches(self):
        return self.patch_embedding.num_patches

    def get_config(self):
        return {
            "image_shape": self.image_shape,
            "patch_size": self.patch_size,
            "hidden_dim": self.hidden_dim,
            "num_heads": self.num_heads,
            "num_layers": self.num_layers,
            "intermediate_dim": self.intermediate_dim,
            "dropout": self.dropout,
            "activation": self.activation,
            "initializer": self.initializer,
            "attention": self.attention,
            "name": self.name,
            "trainable": self.trainable,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config.pop("dtype", None)
        return cls(**config)


@keras.saving.register_keras_serializable(package="keras_llm")
class ImageClassifier(MultiWorkerFix, keras.Model):
    """Class logits `(batch, num_classes)` from an `ImageBackbone`.

    The patch states are mean-pooled (`SequencePooling`, as the text `Classifier` does) and a
    float32 `Dense(num_classes)` head gives the logits.

    Args:
        backbone: `ImageBackbone`.
        num_classes: int. At least 2.
        dropout: float. Dropout before the head. Defaults to `0.0`.

    Example:
    >>> model = ImageClassifier(ImageBackbone((8, 8), patch_size=2), num_classes=10)
    >>> model(np.zeros((4, 8, 8), "float32")).shape
    (4, 10)
    """

    def __init__(self, backbone, num_classes, dropout=0.0, **kwargs):
        if not isinstance(backbone, ImageBackbone):
            raise ValueError(
                "ImageClassifier needs a keras_llm.models.ImageBackbone. "
                f"Received backbone={backbone!r}."
            )
        check_num_classes(num_classes)
        # === Layers ===
        self.backbone = backbone
        self.pooler = SequencePooling("mean", name="pooling", dtype=backbone.dtype_policy)
        self.head_dropout = keras.layers.Dropout(dropout, name="head_dropout")
        self.head = keras.layers.Dense(num_classes, name="classifier_head", dtype="float32")

        # === Functional model ===
        images = backbone.input
        logits = self.head(self.head_dropout(self.pooler(backbone(images))))
        super().__init__(inputs=images, outputs=logits, **kwargs)
        self.num_classes = num_classes
        self.dropout = dropout

    def get_config(self):
        return {
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "num_classes": self.num_classes,
            "dropout": self.dropout,
            "name": self.name,
            "trainable": self.trainable,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**with_backbone_deserialized(config))


@keras.saving.register_keras_serializable(package="keras_llm")
class ImageCaptioner(MultiWorkerFix, keras.Model):
    """Next-token logits for text that follows an image: an image-to-text causal LM.

    The sequence the blocks see is `[patch_1 .. patch_P, text_1 .. text_T]`: the image's
    patch tokens (`PatchEmbedding`) as a prefix, then the text tokens
    (`TokenAndPositionEmbedding`, positions counted from the first word). All blocks are
    causal, so text token `t` reads the whole image and text tokens `<= t`. Logits are
    returned for the `T` text positions only: trained on `(ids[:, :-1], ids[:, 1:])` the
    loss covers exactly the text tokens, and label 0 (padding) is ignored by the default
    loss (`TokenCrossEntropy`, as in `CausalLM`).

    Text padding (id 0) is embedded like any token rather than masked: padding only ever
    follows the text, the causal mask already hides it from every real token, and its
    label is 0, so masking would change nothing but cost Keras' fused causal attention.

    Args:
        vocabulary_size: int. Text token ids; 0 is padding.
        sequence_length: int. Longest text (learned text positions).
        image_shape: tuple. `(height, width)` or `(height, width, channels)`.
        patch_size: int or `(height, width)`. Must divide the image size.
        hidden_dim, num_heads, num_layers, intermediate_dim, dropout, activation,
            initializer, attention: as in `ImageBackbone`.
        tie_embeddings: bool. Reuse the text token embedding as the output head. Defaults
            to `True`.

    Call arguments:
        inputs: dict with `"images"` `(batch, H, W[, C])` float and `"token_ids"`
            `(batch, T)` int, `T <= sequence_length`.

    Returns:
        Logits `(batch, T, vocabulary_size)`.

    Example:
    >>> model = ImageCaptioner(vocabulary_size=18, sequence_length=6, image_shape=(8, 8),
    ...                        patch_size=2)
    >>> model.compile(optimizer="adam")
    >>> model.fit({"images": images, "token_ids": ids[:, :-1]}, ids[:, 1:])
    >>> model.generate(images, max_new_tokens=5)  # (batch, 5) ids, [EOS] then 0
    """

    def __init__(
        self,
        vocabulary_size,
        sequence_length,
        image_shape,
        patch_size,
        hidden_dim=64,
        num_heads=4,
        num_layers=2,
        intermediate_dim=128,
        dropout=0.0,
        activation="gelu",
        initializer="gpt2",
        attention="keras",
        tie_embeddings=True,
        name="image_captioner",
        dtype=None,
        **kwargs,
    ):
        image_shape = _image_shape(image_shape)
        # === Layers ===
        self.patch_embedding = PatchEmbedding(
            patch_size, hidden_dim, initializer=initializer, name="patch_embedding", dtype=dtype
        )
        self.token_embedding = TokenAndPositionEmbedding(
            vocabulary_size=vocabulary_size,
            sequence_length=sequence_length,
            hidden_dim=hidden_dim,
            mask_zero=False,  # see the class docstring
            name="token_embedding",
            dtype=dtype,
        )
        self.embedding_dropout = keras.layers.Dropout(
            dropout, name="embedding_dropout", dtype=dtype
        )
        self.transformer_blocks = _blocks(
            num_layers, True, dtype, num_heads=num_heads, intermediate_dim=intermediate_dim,
            dropout=dropout, activation=activation, attention=attention, initializer=initializer,
        )
        self.final_norm = keras.layers.LayerNormalization(
            epsilon=1e-5, name="final_norm", dtype=dtype
        )
        if not tie_embeddings:
            self.lm_head = keras.layers.Dense(
                vocabulary_size,
                kernel_initializer=keras.initializers.RandomNormal(stddev=0.02),
                name="lm_head",
                dtype=dtype,
            )

        # === Functional model ===
        images = keras.Input(shape=image_shape, name="images")
        token_ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
        patches = self.patch_embedding(images)  # (batch, P, hidden)
        words = self.token_embedding(token_ids)  # (batch, T, hidden)
        x = keras.layers.Concatenate(axis=1, name="image_then_text", dtype=dtype)(
            [patches, words]
        )  # (batch, P + T, hidden)
        x = self.embedding_dropout(x)
        for block in self.transformer_blocks:
            x = block(x)
        num_patches = self.patch_embedding.num_patches
        x = self.final_norm(x)[:, num_patches:]  # (batch, T, hidden): the text positions
        if tie_embeddings:
            logits = self.token_embedding(x, reverse=True)
        else:
            logits = self.lm_head(x)
        super().__init__(
            inputs={"images": images, "token_ids": token_ids},
            outputs=logits,
            name=name,
            dtype=dtype,
            **kwargs,
        )

        # === Config ===
        self.vocabulary_size = vocabulary_size
        self.sequence_length = sequence_length
        self.image_shape = image_shape
        self.patch_size = self.patch_embedding.patch_size
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.num_layers = num_layers
        self.intermediate_dim = intermediate_dim
        self.dropout = dropout
        self.activation = activation
        self.initializer = initializer
        self.attention = attention
        self.tie_embeddings = tie_embeddings

    @property
    def num_patches(self):
        return self.patch_embedding.num_patches

    def compile(self, optimizer="adam", loss=None, metrics=None, **kwargs):
        """`keras.Model.compile` with the padding-ignoring token cross-entropy as default."""
        if loss is None:
            loss = TokenCrossEntropy()
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)
        if isinstance(loss, TokenCrossEntropy) and self.jit_compile:
            loss.fused = False  # see `CausalLM.compile`

    def compile_from_config(self, config):
        # As in CausalLM: Keras skips restoring the compile state of a model whose
        # compile() is overridden; ours only adds a default, so restoring it is safe.
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if self.built and getattr(self, "optimizer", None) is not None:
            self.optimizer.build(self.trainable_variables)

    def _check_decoding(self, max_new_tokens):
        if (
            isinstance(max_new_tokens, bool)
            or not isinstance(max_new_tokens, (int, np.integer))
            or not 1 <= max_new_tokens <= self.sequence_length
        ):
            raise ValueError(
                f"max_new_tokens must be an int in [1, sequence_length={self.sequence_length}] "
                f"(the start id plus the new tokens must fit the text positions). Received "
                f"max_new_tokens={max_new_tokens!r}."
            )
        return int(max_new_tokens)

    def greedy_decode(self, images, max_new_tokens, start_id=START_ID, end_id=END_ID):
        """New token ids `(batch, max_new_tokens)` int32, most likely token at each step.

        Made of Keras ops with a Python loop of `max_new_tokens` model calls (each on the
        whole prefix, no cache: the text is a few tokens), so it runs eagerly and inside a
        `tf.function` or a SavedModel. A row ends at `end_id` (kept); 0 follows it.
        Padding (id 0) is never generated.

        Args:
            images: float `(batch, H, W[, C])` tensor.
            max_new_tokens: int, `1 <= max_new_tokens <= sequence_length`.
            start_id: int. First text token. Defaults to `2` (`[BOS]`).
            end_id: int. Ends a row. Defaults to `3` (`[EOS]`).
        """
        max_new_tokens = self._check_decoding(max_new_tokens)
        images = ops.convert_to_tensor(images, dtype="float32")
        batch = ops.shape(images)[0]
        no_pad = ops.where(ops.arange(self.vocabulary_size) == PAD_ID, -np.inf, 0.0)
        prefix = ops.full((batch, 1), start_id, dtype="int32")  # (batch, 1)
        done = ops.zeros((batch,), dtype="bool")
        new = []
        for _ in range(max_new_tokens):
            logits = self({"images": images, "token_ids": prefix}, training=False)
            last = ops.cast(logits[:, -1, :], "float32") + no_pad  # (batch, vocab)
            token = ops.cast(ops.argmax(last, axis=-1), "int32")
            token = ops.where(done, PAD_ID, token)
            done = ops.logical_or(done, ops.equal(token, end_id))
            new.append(token)
            prefix = ops.concatenate([prefix, token[:, None]], axis=1)
        return ops.stack(new, axis=1)

    def generate(self, images, max_new_tokens=None, start_id=START_ID, end_id=END_ID,
                 batch_size=512):
        """Greedy text for each image: a NumPy int32 array `(batch, max_new_tokens)`.

        Args:
            images: float array `(batch, H, W[, C])`.
            max_new_tokens: int. Defaults to `sequence_length - 1`.
            start_id, end_id: ints, as in `greedy_decode`.
            batch_size: int. Images decoded together.
        """
        if max_new_tokens is None:
            max_new_tokens = self.sequence_length - 1
        max_new_tokens = self._check_decoding(max_new_tokens)
        images = np.asarray(images, dtype="float32")
        if images.shape[1:] != self.image_shape:
            raise ValueError(
                f"images must have shape (batch, *{self.image_shape}). Received an array of "
                f"shape {images.shape}."
            )
        chunks = [
            ops.convert_to_numpy(
                self.greedy_decode(images[i : i + batch_size], max_new_tokens, start_id, end_id)
            )
            for i in range(0, len(images), batch_size)
        ]
        if not chunks:
            return np.zeros((0, max_new_tokens), "int32")
        return np.concatenate(chunks).astype("int32")

    def get_config(self):
        return {
            "vocabulary_size": self.vocabulary_size,
            "sequence_length": self.sequence_length,
            "image_shape": self.image_shape,
            "patch_size": self.patch_size,
            "hidden_dim": self.hidden_dim,
            "num_heads": self.num_heads,
            "num_layers": self.num_layers,
            "intermediate_dim": self.intermediate_dim,
            "dropout": self.dropout,
            "activation": self.activation,
            "initializer": self.initializer,
            "attention": self.attention,
            "tie_embeddings": self.tie_embeddings,
            "name": self.name,
            "trainable": self.trainable,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config.pop("dtype", None)
        return cls(**config)
