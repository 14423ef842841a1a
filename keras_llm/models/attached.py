"""An attribute kept out of Keras' layer tracking (for the tokenizer a model carries)."""


class AttachedTokenizer:
    """Descriptor: `model.tokenizer`, attached by training and loading code, or `None`.

    Stored in the instance `__dict__`, so Keras does not track the tokenizer layer as a
    sublayer: a model with a tokenizer attached saves and reloads like one without.
    """

    def __get__(self, instance, owner=None):
        if instance is None:
            return self
        return instance.__dict__.get("_attached_tokenizer")

    def __set__(self, instance, value):
        instance.__dict__["_attached_tokenizer"] = value
