"""Image patches as tokens: cut, flatten, project, add learned positions (as in ViT)."""

import keras
from keras import ops

from keras_llm.layers.initializers import kernel_initializer


def _pair(value, name):
    """An int or a pair of ints -> a pair of positive ints, or a ValueError naming `name`."""
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in pair
    ):
        raise ValueError(
            f"{name} must be a positive int or a pair of positive ints (height, width). "
            f"Received {name}={value!r}."
        )
    return pair


@keras.saving.register_keras_serializable(package="keras_llm")
class PatchEmbedding(keras.layers.Layer):
    """Cuts images into non-overlapping patches and embeds each patch as one token.

    Patch `(i, j)` of the `(H / ph) x (W / pw)` grid becomes token `i * (W / pw) + j` (row
    by row, as text is read); its `ph * pw * C` pixels, flattened in `(row, column, channel)`
    order, go through one `Dense(hidden_dim)` and a learned position embedding is added.
    `patch_size=2` on an 8x8 image gives 16 tokens of 2x2 blocks; `patch_size=(1, 8)` gives 8
    tokens, one per pixel row. Every token is real, so the layer produces no mask.

    Args:
        patch_size: int or `(height, width)`. Patch size in pixels; it must divide the
            image size.
        hidden_dim: int. Width of each token.
        initializer: str. `"gpt2"` (normal, std 0.02), `"glorot_uniform"` or `"he_normal"`,
            for the projection kernel and the position table. Defaults to `"gpt2"`.

    Call arguments:
        images: float `(batch, H, W)` (one channel) or `(batch, H, W, C)`. `H` and `W` must
            be known when the layer is built.

    Returns:
        `(batch, (H / ph) * (W / pw), hidden_dim)`.

    Example:
    >>> layer = PatchEmbedding(patch_size=2, hidden_dim=32)
    >>> layer(np.zeros((4, 8, 8), "float32")).shape
    (4, 16, 32)
    """

    def __init__(self, patch_size, hidden_dim, initializer="gpt2", **kwargs):
        super().__init__(**kwargs)
        self.patch_size = _pair(patch_size, "patch_size")
        if isinstance(hidden_dim, bool) or not isinstance(hidden_dim, int) or hidden_dim < 1:
            raise ValueError(
                f"hidden_dim must be a positive int. Received hidden_dim={hidden_dim!r}."
            )
        kernel_initializer(initializer)  # validates the name
        self.hidden_dim = hidden_dim
        self.initializer = initializer

    def _grid(self, input_shape):
        """`(rows, columns, channels)` of the patch grid for `input_shape`, checked."""
        if len(input_shape) not in (3, 4):
            raise ValueError(
                "PatchEmbedding takes images of shape (batch, height, width) or (batch, "
                f"height, width, channels). Received input_shape={tuple(input_shape)}."
            )
        height, width = input_shape[1], input_shape[2]
        channels = input_shape[3] if len(input_shape) == 4 else 1
        if height is None or width is None or channels is None:
            raise ValueError(
                "PatchEmbedding needs the image height, width and channels known in advance "
                f"(the number of patches fixes the position table). Received "
                f"input_shape={tuple(input_shape)}; give keras.Input a full image shape."
            )
        patch_height, patch_width = self.patch_size
        if height % patch_height or width % patch_width:
            raise ValueError(
                f"The image size {height}x{width} is not divisible by "
                f"patch_size={self.patch_size}. Pick a patch size that divides both sides "
                f"(e.g. patch_size=(1, {width}) for one token per row), or pad or crop the "
                "images."
            )
        return height // patch_height, width // patch_width, channels

    def build(self, input_shape):
        rows, columns, channels = self._grid(input_shape)
        self.grid = (rows, columns)
        self.num_patches = rows * columns
        self.patch_dim = self.patch_size[0] * self.patch_size[1] * channels
        self.projection = keras.layers.Dense(
            self.hidden_dim,
            kernel_initializer=kernel_initializer(self.initializer),
            name="projection",
            dtype=self.dtype_policy,
        )
        self.projection.build((None, self.num_patches, self.patch_dim))
        self.position_embeddings = self.add_weight(
            name="position_embeddings",
            shape=(self.num_patches, self.hidden_dim),
            initializer=kernel_initializer(self.initializer),
        )
        self.built = True

    def extract_patches(self, images):
        """`(batch, H, W[, C])` -> flattened patches `(batch, num_patches, ph * pw * C)`."""
        rows, columns, channels = self._grid(images.shape)
        patch_height, patch_width = self.patch_size
        if len(images.shape) == 3:
            images = images[..., None]  # (batch, H, W, 1)
        batch = ops.shape(images)[0]
        x = ops.reshape(images, (batch, rows, patch_height, columns, patch_width, channels))
        x = ops.transpose(x, (0, 1, 3, 2, 4, 5))  # (batch, rows, columns, ph, pw, C)
        return ops.reshape(x, (batch, rows * columns, patch_height * patch_width * channels))

    def call(self, images):
        patches = self.extract_patches(ops.cast(images, self.compute_dtype))
        tokens = self.projection(patches)  # (batch, num_patches, hidden_dim)
        return tokens + ops.cast(self.position_embeddings, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        rows, columns, _ = self._grid(input_shape)
        return (input_shape[0], rows * columns, self.hidden_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            patch_size=self.patch_size,
            hidden_dim=self.hidden_dim,
            initializer=self.initializer,
        )
        return config
