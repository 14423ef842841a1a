"""Applications on keras_llm, each runnable from Python and the command line.

- `dialogue`: fine-tune a pretrained causal LM to answer as a 2016 debate candidate
  (dialogue and question answering), `keras-llm chat`.
- `speakers`: who is speaking (Democratic / Republican / Moderator) through `Classifier`,
  `fit` and `evaluate`, against TF-IDF + logistic regression in the same run.
- `multimodal`: the Transformer block on image patches (scikit-learn digits): a classifier and
  an image-to-text causal LM that names the digit.

Imported on first use (`from keras_llm.applications import dialogue`): nothing in the core
package imports them.
"""
