"""Dialogue and question answering on the 2016 US debate transcripts, with one generator.

A pretrained `CausalLM` (a `keras-llm pretrain` run) is fine-tuned with `model.fit` to speak
as a named candidate. Each example is one turn of the `debates/turns` data
(`keras_llm.data.load_dialogue_turns`), written as text the way the model will be prompted:

    HOLT: ... (the turn before the previous one)
    CLINTON: ... (the previous turn)
    HOLT: Mr. Trump, ...           <- context: the previous 3 turns, oldest first
    TRUMP: I will tell you ...     <- the speaker prompt, then the response

The tokenizer lowercases and splits at whitespace and punctuation, so the newlines vanish
and the model reads `[BOS] holt : ... trump : i will tell you ... [EOS]`. Only the
response tokens and the closing `[EOS]` are labels; every other label is 0, which
`CausalLM`'s default loss and `keras_llm.metrics.Perplexity` ignore. So the loss, and the
answer perplexity reported before and after fine-tuning, measure how well the model
predicts what the speaker said, given the context; never the context itself.

Fitting a turn into `sequence_length`: `[BOS]` and the speaker prompt (`trump :`) are always
kept whole. The context is cut from the left (the oldest words go first). A response too
long to leave a quarter of the window for context loses its end (and its `[EOS]`), so an
answer is never trained without the question before it.

Question answering is a task for the same generator, not a second model: a QA pair is a
turn whose previous turn is a moderator's (`previous_party == "Moderator"`) and whose
speaker is a candidate; its context is the question alone (`WALLACE: ...`). The one
fine-tune trains on the dialogue turns and on the train split's QA pairs in that
question-only form, so that `keras-llm chat` (a moderator's question, then `TRUMP:`) asks
the model for what it was trained on. Held-out QA answer perplexity is measured on the test
debate's pairs, before and after fine-tuning, with the same code as the dialogue numbers.

Splits are by debate: train = the 1st presidential and the vice-presidential debate,
validation = the 2nd, test = the 3rd.

A dialogue run directory holds what a pretraining run holds (`causal_lm.keras`,
`backbone.keras`, `tokenizer/`, configs, `history.csv`, `steps.csv`, `metrics.json`, plots),
plus `dialogue.json` (the speakers, the prompt format) and `samples.json` (generated
answers to held-out questions).
"""

import dataclasses
import math
import os
import re
import sys

import keras
import numpy as np
import tensorflow as tf

from keras_llm import data as llm_data
from keras_llm import metrics as llm_metrics
from keras_llm import training
from keras_llm._io import load_keras_model, read_json, write_json
from keras_llm.models import CausalLM

DIALOGUE = "dialogue.json"
SAMPLES = "samples.json"
MODERATOR = "Moderator"
# The candidates of the 2016 debates: who a pretraining run (no dialogue.json) can play.
CANDIDATES = ("CLINTON", "KAINE", "PENCE", "TRUMP")
# The moderator the chat user plays by default: the train split's presidential moderator.
DEFAULT_MODERATOR = "HOLT"
CONTEXT_TURNS = 3  # what the `debates/turns` data holds per example
CONTEXT_RESERVE = 0.25  # share of the window kept for context when a response is too long
QUIT_WORDS = ("quit", "exit")


# --------------------------------------------------------------------------- formatting


def speaker_prompt(speaker):
    """The text that asks the model to speak as `speaker`: `"TRUMP:"`."""
    return f"{speaker}:"


def format_turn(context, speaker, response=""):
    """`context + "\\n" + SPEAKER + ": " + response`: one turn as the model reads it.

    Args:
        context: str. Previous turns as `SPEAKER: text` lines joined by newlines (may be
            empty).
        speaker: str. Who answers, e.g. `"TRUMP"`.
        response: str. What they said; empty for a prompt.

    Returns:
        str.
    """
    line = f"{speaker_prompt(speaker)} {response}"
    return f"{context}\n{line}" if context else line


def previous_turn(turn):
    """The last line of a turn's context (the previous speaker's words, with their name).

    The last `PREVIOUS_SPEAKER: ` at a line start marks it (`debates` puts each turn on one
    line; this does not rely on it).
    """
    context, marker = turn["context"], speaker_prompt(turn["previous_speaker"]) + " "
    at = context.rfind("\n" + marker)
    return context[at + 1:] if at >= 0 else context


def qa_pairs(turns):
    """Moderator question -> candidate answer pairs, with the question alone as context.

    Args:
        turns: list of dicts as `load_turns` returns.

    Returns:
        The turns whose previous turn is a moderator's and whose speaker is not a
        moderator, each with `context` replaced by that question (`"WALLACE: ..."`).
    """
    return [
        {**turn, "context": previous_turn(turn)}
        for turn in turns
        if turn["previous_party"] == MODERATOR and turn["party"] != MODERATOR
    ]


def pack_turn(context_ids, prompt_ids, response_ids, sequence_length, start_id, end_id,
              context_reserve=CONTEXT_RESERVE):
    """`[BOS] + context + prompt + response + [EOS]`, fitted into `sequence_length + 1` ids.

    The model reads the first `sequence_length` ids and predicts the last `sequence_length`.
    `[BOS]` and the prompt are kept whole; the context is cut from the left; a response that
    would leave the context less than `context_reserve` of the window (or what context there
    is, if less) is cut at its end and loses its `[EOS]`.

    Args:
        context_ids, prompt_ids, response_ids: lists of int. Token ids, no specials.
        sequence_length: int. The model's context length.
        start_id, end_id: int. `[BOS]` and `[EOS]`.
        context_reserve: float. Share of the window a long response leaves for context.

    Returns:
        `(ids, response_start)`: the packed ids (at most `sequence_length + 1`) and the index
        in `ids` of the first response token (the first id that is a label).
    """
    room = sequence_length - len(prompt_ids)  # ids after [BOS] and the prompt: L + 1 - 1 - P
    if room < 1:
        raise ValueError(
            f"The speaker prompt takes {len(prompt_ids)} tokens, which leaves no room for an "
            f"answer in sequence_length={sequence_length}. Use a model with a longer "
            "sequence_length."
        )
    reserve = min(len(context_ids), int(sequence_length * context_reserve))
    response = list(response_ids) + [end_id]
    if len(response) > room - reserve:
        response = response[: max(1, room - reserve)]  # cut: no [EOS]
    keep = min(len(context_ids), room - len(response))  # the newest context ids that fit
    context = list(context_ids)[len(context_ids) - keep:]
    ids = [start_id] + context + list(prompt_ids) + response
    return ids, len(ids) - len(response)


def _tokenize(tokenizer, texts):
    """list of str -> list of id lists (one tokenizer call for the whole list)."""
    if not texts:
        return []
    return tokenizer.tokenize(tf.constant(list(texts), tf.string)).to_list()


def encode_turns(tokenizer, turns, sequence_length, context_reserve=CONTEXT_RESERVE):
    """Turns -> `(inputs, labels)`, int32 arrays `(len(turns), sequence_length)`.

    `labels[i, j]` is the id that follows `inputs[i, j]` when it is a response token (or the
    response's `[EOS]`), else 0; padding is 0 in both. See `pack_turn` for truncation.

    Args:
        tokenizer: `keras_llm.data.Tokenizer`.
        turns: list of dicts with `context`, `speaker` and `response` strings.
        sequence_length: int. The model's context length.
        context_reserve: float. See `pack_turn`.

    Returns:
        `(inputs, labels)`.
    """
    contexts = _tokenize(tokenizer, [turn["context"] for turn in turns])
    prompts = _tokenize(tokenizer, [speaker_prompt(turn["speaker"]) for turn in turns])
    responses = _tokenize(tokenizer, [turn["response"] for turn in turns])
    inputs = np.zeros((len(turns), sequence_length), "int32")
    labels = np.zeros((len(turns), sequence_length), "int32")
    for i, parts in enumerate(zip(contexts, prompts, responses, strict=True)):
        ids, start = pack_turn(*parts, sequence_length, tokenizer.start_id, tokenizer.end_id,
                               context_reserve)
        inputs[i, : len(ids) - 1] = ids[:-1]
        labels[i, start - 1: len(ids) - 1] = ids[start:]  # label j is the id after input j
    return inputs, labels


def encode_prompt(tokenizer, context, speaker, max_length):
    """`[BOS] + context + "SPEAKER:"` as ids, the context cut from the left to `max_length`.

    The prompt of `generate`, tokenized as in training (`encode_turns` without a response).
    """
    context_ids, prompt_ids = _tokenize(tokenizer, [context, speaker_prompt(speaker)])
    room = max_length - 1 - len(prompt_ids)
    if room < 0:
        raise ValueError(
            f"The prompt {speaker_prompt(speaker)!r} needs {len(prompt_ids) + 1} tokens but only "
            f"{max_length} fit with the tokens to generate. Lower max_new_tokens."
        )
    keep = min(len(context_ids), room)  # the newest context ids that fit
    return [tokenizer.start_id] + context_ids[len(context_ids) - keep:] + prompt_ids


def turn_dataset(tokenizer, turns, sequence_length, batch_size, shuffle=False, seed=None,
                 repeat=False):
    """`tf.data.Dataset` of `(inputs, labels)` batches from turns (see `encode_turns`).

    With `shuffle` and `repeat`, every batch is full (for step-budgeted training).
    """
    inputs, labels = encode_turns(tokenizer, turns, sequence_length)
    dataset = tf.data.Dataset.from_tensor_slices((inputs, labels))
    if shuffle:
        dataset = dataset.shuffle(len(turns), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    return dataset.batch(batch_size, drop_remainder=repeat).prefetch(tf.data.AUTOTUNE)


# --------------------------------------------------------------------------- data


def load_turns(split, data_dir=None):
    """The turns of one split of `debates/turns` as a list of dicts of str.

    Args:
        split: str. `"train"` (1st + VP debates), `"validation"` (2nd) or `"test"` (3rd).
        data_dir: str. tensorflow-datasets directory.
    """
    dataset = llm_data.load_dialogue_turns(split, data_dir=data_dir)
    return [
        {key: value.decode("utf-8") if isinstance(value, bytes) else value
         for key, value in example.items()}
        for example in dataset.as_numpy_iterator()
    ]


def training_examples(turns):
    """The fine-tuning examples: every turn, plus its QA pair in question-only form."""
    return list(turns) + qa_pairs(turns)


# --------------------------------------------------------------------------- evaluation


def answer_perplexity(model, turns, batch_size=32):
    """Perplexity of the response tokens: exp of their mean next-token cross-entropy.

    Every response token (and each whole response's `[EOS]`) of every turn counts once;
    context, prompt and padding do not (`encode_turns` labels them 0).

    Args:
        model: `CausalLM` with its `tokenizer` attached.
        turns: list of turn dicts.
        batch_size: int.

    Returns:
        dict: `perplexity`, `loss` (mean cross-entropy in nats) and `tokens` (how many).
    """
    tokenizer = _tokenizer_of(model)
    sequence_length = model.backbone.model_config.sequence_length
    perplexity = llm_metrics.Perplexity()
    for inputs, labels in turn_dataset(tokenizer, turns, sequence_length, batch_size):
        perplexity.update_state(labels, model.predict_on_batch(inputs))
    tokens = float(keras.ops.convert_to_numpy(perplexity.token_count))
    loss = float(keras.ops.convert_to_numpy(perplexity.total_crossentropy)) / max(tokens, 1.0)
    return {"perplexity": math.exp(loss), "loss": loss, "tokens": int(tokens)}


def _tokenizer_of(model):
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise ValueError(
            "The model has no tokenizer attached. Load it with "
            "keras_llm.applications.dialogue.load_generator(run_dir)."
        )
    return tokenizer


# --------------------------------------------------------------------------- generation


def _tidy(text):
    """Detokenized text -> readable: `i ' m here .` -> `i'm here.` (the words unchanged)."""
    text = re.sub(r" ?' ?(s|m|t|re|ve|ll|d)\b", r"'\1", text)
    text = re.sub(r" ([.,!?;:%)\]])", r"\1", text)
    text = re.sub(r"([(\[$]) ", r"\1", text)
    return re.sub(r" - - ", " -- ", text)


def _cut_at_next_turn(text, names):
    """The answer up to where the model starts another speaker's turn (`holt : ...`)."""
    if not names:
        return text
    pattern = r"(^|\s)(" + "|".join(re.escape(n.lower()) for n in names) + r") :"
    match = re.search(pattern, text)
    return text[: match.start()].strip() if match else text


def generate_answers(model, contexts, speakers, max_new_tokens=48, sampler="greedy",
                     temperature=1.0, top_k=None, top_p=None, seed=0, stop_names=()):
    """Answers, one per `(context, speaker)`, from one batched `CausalLM.generate` call.

    Each prompt is `[BOS] + context + "SPEAKER:"` (the context cut from the left to leave
    room for `max_new_tokens`), exactly as in training. The answer is the continuation up
    to `[EOS]`, or up to a new `NAME :` turn of one of `stop_names`.

    Args:
        model: `CausalLM` with its tokenizer attached.
        contexts: list of str. Previous turns as `SPEAKER: text` lines.
        speakers: list of str. Who answers each.
        max_new_tokens, sampler, temperature, top_k, top_p, seed: as `CausalLM.generate`.
        stop_names: names whose `NAME :` ends an answer.

    Returns:
        list of str: lowercased, punctuation re-attached.
    """
    tokenizer = _tokenizer_of(model)
    max_length = model.backbone.model_config.sequence_length - max_new_tokens
    rows = [encode_prompt(tokenizer, context, speaker, max_length)
            for context, speaker in zip(contexts, speakers, strict=True)]
    outputs = model.generate(
        rows, max_new_tokens=max_new_tokens, sampler=sampler, temperature=temperature,
        top_k=top_k, top_p=top_p, seed=seed,
    )
    new = [output[len(row):] for row, output in zip(rows, outputs, strict=True)]
    texts = tokenizer.detokenize(tf.ragged.constant(new, dtype=tf.int32, ragged_rank=1))
    return [
        _tidy(_cut_at_next_turn(text.decode("utf-8", "replace"), stop_names))
        for text in texts.numpy()
    ]


def sample_questions(pairs, count=5, min_words=6, max_words=40):
    """`count` QA pairs spread evenly over `pairs`, among real questions of a readable length
    (a `?` and `min_words` to `max_words` words); all pairs if none qualifies."""
    def is_readable(pair):
        question = previous_turn(pair)
        return "?" in question and min_words <= len(question.split()) - 1 <= max_words

    readable = [pair for pair in pairs if is_readable(pair)] or list(pairs)
    if len(readable) <= count:
        return readable
    return [readable[int(i)] for i in np.linspace(0, len(readable) - 1, count)]


# --------------------------------------------------------------------------- run directories


def run_info(run_dir):
    """Checks that `run_dir` holds a causal LM and a tokenizer; returns its speakers.

    Returns:
        The run's `dialogue.json` (`speakers`, `moderators`, `names`), or for a pretraining
        run the 2016 candidates.

    Raises:
        FileNotFoundError: `run_dir` holds no causal LM or no tokenizer (one-line message).
    """
    run_dir = os.fspath(run_dir)
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(f"No run directory at {run_dir!r}.")
    if not (os.path.exists(os.path.join(run_dir, training.CAUSAL_LM))
            and os.path.isdir(os.path.join(run_dir, training.TOKENIZER))):
        has_classifier = os.path.exists(os.path.join(run_dir, training.CLASSIFIER))
        what = "a classifier run; this needs" if has_classifier else "not"
        raise FileNotFoundError(
            f"{run_dir!r} is {what} a pretraining or dialogue run directory with "
            f"{training.CAUSAL_LM} and {training.TOKENIZER}/ (keras-llm pretrain, keras-llm "
            "dialogue finetune)."
        )
    info_path = os.path.join(run_dir, DIALOGUE)
    if os.path.exists(info_path):
        return read_json(info_path)
    return {"speakers": list(CANDIDATES), "moderators": [DEFAULT_MODERATOR], "names": []}


def load_generator(run_dir):
    """The `CausalLM` of a pretraining or dialogue run, its tokenizer attached.

    The model is built in the current Keras dtype policy (a `.keras` file does not store
    one), so load it inside `training.precision_policy(...)` to choose the precision.

    Returns:
        `(model, info)`, `info` as `run_info` gives it.
    """
    info = run_info(run_dir)
    model = load_keras_model(os.path.join(run_dir, training.CAUSAL_LM), compile=False)
    if not isinstance(model, CausalLM):
        raise ValueError(f"{run_dir!r} does not hold a keras_llm CausalLM.")
    model.tokenizer = llm_data.Tokenizer.load(os.path.join(run_dir, training.TOKENIZER))
    return model, info


def check_speaker(speaker, speakers):
    """`speaker` in upper case if it is one of `speakers`, else a ValueError listing them."""
    name = str(speaker).strip().upper()
    if name not in speakers:
        raise ValueError(
            f"Unknown speaker {speaker!r}: this model can answer as one of "
            f"{sorted(speakers)}. Pick one with --as."
        )
    return name


# --------------------------------------------------------------------------- fine-tuning


def finetune_dialogue(
    pretrained_run_dir,
    run_dir="runs/dialogue",
    train_config="small",
    *,
    data_dir=None,
    sample_count=5,
    max_new_tokens=40,
    callbacks=(),
    verbose="auto",
):
    """Fine-tunes a pretrained `CausalLM` to answer as the debaters, and measures it.

    Trains with `model.fit` on the train split's turns and QA pairs (see the module
    docstring), with keras_llm's warm-up + cosine schedule, gradient clipping and AdamW,
    keeping the epoch with the lowest validation answer perplexity. The answer perplexity
    of the validation and test dialogue turns and of the test QA pairs is measured with the
    same code on the same tokens before and after fine-tuning; `samples.json` holds greedy
    and top-p answers of both models to a few held-out test questions.

    Args:
        pretrained_run_dir: str. A `keras-llm pretrain` run (`causal_lm.keras`, `tokenizer/`).
        run_dir: str. Where the dialogue run is written.
        train_config: `TrainConfig` or preset name. Uses `batch_size`, `finetune_epochs`,
            `finetune_learning_rate`, `finetune_steps_per_epoch` (0: one pass over the
            examples), the schedule, clipping, weight decay, precision, seed.
        data_dir: str. tensorflow-datasets directory.
        sample_count: int. Held-out questions to answer in `samples.json`.
        max_new_tokens: int. Longest generated sample answer.
        callbacks: extra Keras callbacks.
        verbose: passed to `fit`.

    Returns:
        `training.RunResult`; `metrics` holds `{validation,test,test_qa}_answer_perplexity_
        {before,after}`, the token counts and the example counts.
    """
    run_info(pretrained_run_dir)  # a wrong directory fails before anything is written
    run = training.TrainingRun(run_dir, train_config, verbose=verbose)
    train_config = run.train_config
    with run.policy(), run.strategy.scope():
        model, _ = load_generator(pretrained_run_dir)  # built in the run's precision
    tokenizer = model.tokenizer
    sequence_length = model.backbone.model_config.sequence_length

    splits = {split: load_turns(split, data_dir) for split in ("train", "validation", "test")}
    examples = training_examples(splits["train"])
    held_out = {
        "validation": splits["validation"],
        "test": splits["test"],
        "test_qa": qa_pairs(splits["test"]),
    }
    names = sorted({t["speaker"] for turns in splits.values() for t in turns})
    samples = sample_questions(held_out["test_qa"], sample_count)
    run.write_files("dialogue", {
        "dataset": "debates/turns", "pretrained": os.path.abspath(pretrained_run_dir),
    }, tokenizer=tokenizer, model_config=model.backbone.model_config)
    write_json(run.path(DIALOGUE), _dialogue_info(splits["train"], names))

    batch = train_config.batch_size
    metrics = {"train_turns": len(splits["train"]), "train_examples": len(examples)}
    with run.policy():
        _measure(model, held_out, batch, metrics, "before")
        before_samples = _sample_answers(model, samples, names, max_new_tokens,
                                         train_config.seed)
        steps_per_epoch = train_config.finetune_steps_per_epoch or max(1, len(examples) // batch)
        train_data = turn_dataset(tokenizer, examples, sequence_length, batch, shuffle=True,
                                  seed=train_config.seed, repeat=True)
        validation_data = turn_dataset(
            tokenizer, held_out["validation"], sequence_length, batch
        ).cache()
        learning_rate = train_config.finetune_learning_rate
        run.compile(model, learning_rate, metrics=llm_metrics.language_model_metrics())
        run.callbacks(
            steps_per_epoch * train_config.finetune_epochs, learning_rate,
            checkpoint=run.path(training.CAUSAL_LM), monitor="val_perplexity", mode="min",
            tokens=(batch, sequence_length), extra=callbacks,
        )
        history = run.fit(
            model, train_data,
            epochs=train_config.finetune_epochs,
            steps_per_epoch=steps_per_epoch,
            validation_data=validation_data,
        )
        run.restore_best(model)
        _measure(model, held_out, batch, metrics, "after")
        after_samples = _sample_answers(model, samples, names, max_new_tokens,
                                        train_config.seed)

    model.backbone.save(run.path(training.BACKBONE))
    write_json(run.path(SAMPLES), [
        {"debate": pair["debate"], "question": pair["context"], "speaker": pair["speaker"],
         "real_answer": pair["response"],
         **{f"before_{k}": v[i] for k, v in before_samples.items()},
         **{f"after_{k}": v[i] for k, v in after_samples.items()}}
        for i, pair in enumerate(samples)
    ])
    return run.finish(model, metrics, history, tokenizer)


def _dialogue_info(train_turns, names):
    """What `dialogue.json` records: who speaks, who asks, the prompt format."""
    return {
        "speakers": sorted({t["speaker"] for t in train_turns if t["party"] != MODERATOR}),
        "moderators": sorted({t["speaker"] for t in train_turns if t["party"] == MODERATOR}),
        "names": names,
        "context_turns": CONTEXT_TURNS,
        "format": format_turn("MODERATOR: question", "SPEAKER", "answer"),
    }


def _measure(model, held_out, batch_size, metrics, when):
    """Answer perplexity of each held-out set into `metrics` (`<set>_answer_perplexity_
    <when>`; with `when="before"` also the token and example counts)."""
    for name, turns in held_out.items():
        measured = answer_perplexity(model, turns, batch_size)
        metrics[f"{name}_answer_perplexity_{when}"] = measured["perplexity"]
        if when == "before":
            metrics[f"{name}_answer_tokens"] = measured["tokens"]
            metrics[f"{name}_examples"] = len(turns)


def read_samples(run_dir):
    """The held-out questions and generated answers of a dialogue run (`samples.json`)."""
    return read_json(os.path.join(run_dir, SAMPLES))


def _sample_answers(model, pairs, names, max_new_tokens, seed):
    """Greedy and top-p (p=0.9, temperature 0.8) answers to the QA pairs' questions."""
    if not pairs:
        return {"greedy": [], "top_p": []}
    contexts = [pair["context"] for pair in pairs]
    speakers = [pair["speaker"] for pair in pairs]
    return {
        "greedy": generate_answers(model, contexts, speakers, max_new_tokens,
                                   stop_names=names),
        "top_p": generate_answers(model, contexts, speakers, max_new_tokens, sampler="top_p",
                                  temperature=0.8, top_p=0.9, seed=seed, stop_names=names),
    }


# --------------------------------------------------------------------------- chat


@dataclasses.dataclass
class Chat:
    """A conversation: the user is a moderator, the model answers as `speaker`.

    Keeps the last `CONTEXT_TURNS` turns (questions and answers) as the next prompt's
    context, as in training.

    Args:
        model: `CausalLM` with its tokenizer attached.
        speaker: str. Who the model plays, e.g. `"TRUMP"`.
        moderator: str. The name the user's lines go under. Defaults to `"HOLT"`.
        stop_names: names whose `NAME :` ends an answer.
        generate_kwargs: `max_new_tokens`, `sampler`, `temperature`, `top_k`, `top_p`,
            `seed` for `generate_answers` (each answer uses `seed + turn number`).
    """

    model: keras.Model
    speaker: str
    moderator: str = DEFAULT_MODERATOR
    stop_names: tuple = ()
    generate_kwargs: dict = dataclasses.field(default_factory=dict)
    history: list = dataclasses.field(default_factory=list)

    def ask(self, question):
        """Adds the moderator's `question`, returns (and remembers) the answer."""
        self.history.append(f"{self.moderator}: {question}")
        context = "\n".join(self.history[-CONTEXT_TURNS:])
        kwargs = dict(self.generate_kwargs)
        kwargs["seed"] = kwargs.get("seed", 0) + len(self.history)
        names = tuple(self.stop_names) + (self.moderator,)
        answer = generate_answers(self.model, [context], [self.speaker], stop_names=names,
                                  **kwargs)[0]
        self.history.append(f"{self.speaker}: {answer}")
        return answer


def read_questions(path):
    """The non-empty lines of a questions file; a ValueError if there are none."""
    with open(path, encoding="utf-8") as f:
        questions = [line.strip() for line in f if line.strip()]
    if not questions:
        raise ValueError(f"The question file {path!r} is empty: write one question a line.")
    return questions


def chat(
    run_dir,
    speaker="TRUMP",
    *,
    questions_file=None,
    output_file=None,
    moderator=DEFAULT_MODERATOR,
    max_new_tokens=48,
    sampler="top_p",
    temperature=0.8,
    top_k=None,
    top_p=0.9,
    seed=0,
    stdin=None,
    stdout=None,
):
    """`keras-llm chat`: answer a moderator as `speaker`, from stdin or from a file.

    Interactive (no `questions_file`): reads a line at a time, prints `SPEAKER: answer`,
    keeps the recent turns as context, stops at end of input or a line `quit`/`exit`.
    Non-interactive: answers every line of `questions_file` independently (each as a QA
    prompt `MODERATOR: question` then `SPEAKER:`), in one batch, printing
    `MODERATOR: question` / `SPEAKER: answer` pairs; `output_file` also gets them as JSON.

    Args:
        run_dir: str. A dialogue run (or a pretraining run, to compare).
        speaker: str. One of the run's speakers (`dialogue.json`), any case.
        questions_file: str. One question a line.
        output_file: str. Where to write the answers as JSON (non-interactive mode).
        moderator: str. The name the questions are asked under.
        max_new_tokens, sampler, temperature, top_k, top_p, seed: as `CausalLM.generate`.
        stdin, stdout: text streams; default `sys.stdin`, `sys.stdout`.

    Returns:
        list of `{"question", "speaker", "answer"}` dicts, in order.

    Raises:
        FileNotFoundError: bad `run_dir` or `questions_file`.
        ValueError: unknown speaker (the message lists the choices), empty question file,
            bad sampler settings.
    """
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    # Every check a user can fail comes before the model loads.
    speaker = check_speaker(speaker, run_info(run_dir)["speakers"])
    questions = read_questions(questions_file) if questions_file else None
    model, info = load_generator(run_dir)
    moderator = str(moderator).strip().upper() or DEFAULT_MODERATOR
    settings = {"max_new_tokens": max_new_tokens, "sampler": sampler,
                "temperature": temperature, "top_k": top_k, "top_p": top_p, "seed": seed}
    names = tuple(info.get("names", ())) + tuple(info["speakers"]) + (moderator,)
    answered = []
    if questions is not None:
        contexts = [f"{moderator}: {question}" for question in questions]
        answers = generate_answers(model, contexts, [speaker] * len(questions),
                                   stop_names=names, **settings)
        for question, answer in zip(questions, answers, strict=True):
            stdout.write(f"{moderator}: {question}\n{speaker}: {answer}\n\n")
            answered.append({"question": question, "speaker": speaker, "answer": answer})
    else:
        conversation = Chat(model, speaker, moderator, names, settings)
        interactive = stdin.isatty()
        if interactive:
            stdout.write(f"You are {moderator}, the moderator; {speaker} answers. "
                         "Type 'quit' or press Ctrl-D to end.\n")
        while True:
            if interactive:
                stdout.write(f"{moderator}: ")
                stdout.flush()
            line = stdin.readline()
            if not line:  # end of input
                break
            question = line.strip()
            if question.lower() in QUIT_WORDS:
                break
            if not question:
                continue
            answer = conversation.ask(question)
            stdout.write(f"{speaker}: {answer}\n")
            stdout.flush()
            answered.append({"question": question, "speaker": speaker, "answer": answer})
    if output_file:
        write_json(output_file, answered)
    return answered
