"""Dialogue and QA on the debates: label masks, truncation, fine-tuning, perplexity, chat."""

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from keras_llm import TrainConfig, cli
from keras_llm.applications import dialogue

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUESTION = "Mr. Trump, what will you do about jobs?"


@pytest.fixture(scope="module")
def turns(data_dir):
    return {split: dialogue.load_turns(split, data_dir) for split in ("train", "test")}


@pytest.fixture(scope="module")
def tokenizer(pretrained_run):
    return dialogue.load_generator(pretrained_run)[0].tokenizer


@pytest.fixture(scope="module")
def dialogue_run(pretrained_run, data_dir, tmp_path_factory):
    """A tiny dialogue fine-tune (2 epochs of 20 steps) of the tiny pretraining run."""
    run_dir = str(tmp_path_factory.mktemp("dialogue"))
    config = TrainConfig.preset(
        "tiny", finetune_epochs=2, finetune_steps_per_epoch=20, finetune_learning_rate=3e-3
    )
    result = dialogue.finetune_dialogue(
        pretrained_run, run_dir, config, data_dir=data_dir, sample_count=2, max_new_tokens=6,
        verbose=0,
    )
    return run_dir, result


def test_labels_count_only_the_response_tokens(turns, tokenizer):
    examples = turns["train"][::8] + [
        {"context": "", "speaker": "TRUMP", "response": "Wrong."},  # first turn: no context
        {"context": "HOLT: Thank you.", "speaker": "CLINTON", "response": ""},  # empty answer
    ]
    checked = 0
    for length in (4096, 96):  # nothing is cut at 4096; at 96 the turns that fit are checked
        inputs, labels = dialogue.encode_turns(tokenizer, examples, length)
        for row, turn in enumerate(examples):
            # Independently: the whole turn as one string, tokenized in one piece.
            text = f"{turn['context']}\n{turn['speaker']}: {turn['response']}"
            full = [tokenizer.start_id] + tokenizer.tokenize(text).numpy().tolist()
            full.append(tokenizer.end_id)
            if len(full) > length + 1:
                continue
            answer = len(tokenizer.tokenize(turn["response"]).numpy()) + 1  # + [EOS]
            expected_labels = [0] * (len(full) - 1 - answer) + full[-answer:]
            np.testing.assert_array_equal(inputs[row, : len(full) - 1], full[:-1])
            np.testing.assert_array_equal(labels[row, : len(full) - 1], expected_labels)
            assert not inputs[row, len(full) - 1:].any() and not labels[row, len(full) - 1:].any()
            assert np.count_nonzero(labels[row]) == answer
            checked += 1
    assert checked >= len(examples) + 5  # a few whole turns fit in 96 tokens too


def test_left_truncation_keeps_bos_the_speaker_prompt_and_the_context_tail():
    context, prompt = list(range(100, 160)), [7, 8]
    # A short answer: the context loses its oldest ids, the rest is whole.
    ids, start = dialogue.pack_turn(context, prompt, [200, 201], 32, 2, 3)
    assert ids == [2] + context[-27:] + prompt + [200, 201, 3] and len(ids) == 33
    assert ids[start:] == [200, 201, 3]
    # A long answer: cut at its end (no [EOS]); a quarter of the window stays context.
    ids, start = dialogue.pack_turn(context, prompt, list(range(200, 300)), 32, 2, 3)
    assert ids == [2] + context[-8:] + prompt + list(range(200, 222)) and len(ids) == 33
    assert ids[start - 2:start] == prompt
    # Everything fits: nothing is cut, nothing is padded in between.
    ids, start = dialogue.pack_turn([100, 101, 102], prompt, [200], 32, 2, 3)
    assert ids == [2, 100, 101, 102, 7, 8, 200, 3] and ids[start:] == [200, 3]
    # Less context than the reserve: all of it is kept.
    ids, _ = dialogue.pack_turn([100, 101], prompt, list(range(200, 300)), 32, 2, 3)
    assert ids[:5] == [2, 100, 101, 7, 8] and len(ids) == 33


def test_a_long_real_context_is_cut_from_the_left(tokenizer):
    context = "HOLT: " + " ".join(f"point {i}." for i in range(200))
    turn = {"context": context, "speaker": "PENCE", "response": "Thank you."}
    inputs, labels = dialogue.encode_turns(tokenizer, [turn], 32)
    response = tokenizer.tokenize("Thank you.").numpy().tolist() + [tokenizer.end_id]
    prompt = tokenizer.tokenize("PENCE:").numpy().tolist()
    kept = 33 - 1 - len(prompt) - len(response)
    tail = tokenizer.tokenize(context).numpy().tolist()[-kept:]
    full = [tokenizer.start_id] + tail + prompt + response
    np.testing.assert_array_equal(inputs[0], full[:-1])
    np.testing.assert_array_equal(labels[0][-len(response):], response)
    assert np.count_nonzero(labels[0]) == len(response)


def test_qa_pairs_are_a_moderator_question_and_a_candidate_answer(turns):
    by_turn = {(t["debate"], int(t["turn"])): t for t in turns["test"]}
    pairs = dialogue.qa_pairs(turns["test"])
    assert len(pairs) > 20
    for pair in pairs:
        asked = by_turn[(pair["debate"], int(pair["turn"]) - 1)]  # the turn just before
        assert asked["party"] == "Moderator" and pair["party"] != "Moderator"
        assert pair["context"] == f"{asked['speaker']}: {asked['response']}"


def test_answer_perplexity_is_exp_of_the_mean_response_nll(pretrained_run, data_dir):
    model, _ = dialogue.load_generator(pretrained_run)
    examples = dialogue.load_turns("validation", data_dir)[:10]
    measured = dialogue.answer_perplexity(model, examples, batch_size=4)
    sequence_length = model.backbone.model_config.sequence_length
    inputs, labels = dialogue.encode_turns(model.tokenizer, examples, sequence_length)
    logits = np.asarray(model.predict(inputs, verbose=0), "float64")
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    nll = -np.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]
    mask = labels != 0
    assert measured["tokens"] == mask.sum()
    np.testing.assert_allclose(measured["loss"], nll[mask].mean(), rtol=1e-5)
    np.testing.assert_allclose(measured["perplexity"], np.exp(nll[mask].mean()), rtol=1e-5)


def test_dialogue_run_directory(dialogue_run):
    run_dir, result = dialogue_run
    for name in ("causal_lm.keras", "backbone.keras", "tokenizer", "model_config.json",
                 "train_config.json", "run.json", "history.csv", "steps.csv", "metrics.json",
                 "dialogue.json", "samples.json", "loss.png"):
        assert os.path.exists(os.path.join(run_dir, name)), name
    info = json.load(open(os.path.join(run_dir, "dialogue.json")))
    assert info["speakers"] == ["CLINTON", "KAINE", "PENCE", "TRUMP"]
    assert info["moderators"] == ["HOLT", "QUIJANO"]
    metrics = json.load(open(os.path.join(run_dir, "metrics.json")))
    for name in ("validation", "test", "test_qa"):
        for when in ("before", "after"):
            assert np.isfinite(metrics[f"{name}_answer_perplexity_{when}"])
    # The kept epoch is the one with the best validation perplexity that fit measured.
    np.testing.assert_allclose(
        metrics["validation_answer_perplexity_after"], min(result.history["val_perplexity"]),
        rtol=1e-4,
    )
    samples = dialogue.read_samples(run_dir)
    assert len(samples) == 2
    for sample in samples:
        assert sample["question"].split(":")[0] == "WALLACE"  # the test debate's moderator
        assert {"before_greedy", "after_greedy", "after_top_p", "real_answer"} <= set(sample)


def test_finetuning_lowers_the_train_answer_loss(dialogue_run, pretrained_run, turns):
    examples = dialogue.training_examples(turns["train"])[:64]
    before = dialogue.answer_perplexity(dialogue.load_generator(pretrained_run)[0], examples)
    after = dialogue.answer_perplexity(dialogue.load_generator(dialogue_run[0])[0], examples)
    assert after["tokens"] == before["tokens"]
    assert after["loss"] < before["loss"] - 0.2, (before, after)


def _greedy_by_hand(model, prompt, steps):
    """Greedy decoding with the whole model over the whole prefix at every step."""
    ids = list(prompt)
    for _ in range(steps):
        logits = np.asarray(model(np.array([ids], "int32"), training=False))[0, -1]
        ids.append(int(np.argmax(logits[1:])) + 1)  # id 0 (padding) is never generated
        if ids[-1] == model.tokenizer.end_id:
            break
    return ids[len(prompt):]


def _chat(args, stdin=""):
    return subprocess.run(
        [sys.executable, "-m", "keras_llm", "chat", *args], input=stdin, capture_output=True,
        text=True, cwd=REPO, timeout=300,
    )


@pytest.mark.slow  # two fresh processes: about 20 s
def test_chat_answers_a_question_file_and_stdin(dialogue_run, tmp_path):
    run_dir = dialogue_run[0]
    questions = tmp_path / "questions.txt"
    questions.write_text(f"{QUESTION}\n\n")
    settings = ["--as", "trump", "--max-new-tokens", "6", "--sampler", "greedy"]

    # The expected answer, from a prompt written as one string and a naive greedy loop.
    model, info = dialogue.load_generator(run_dir)
    prompt = model.tokenizer.tokenize(f"HOLT: {QUESTION}\nTRUMP:").numpy().tolist()
    new = _greedy_by_hand(model, [model.tokenizer.start_id] + prompt, 6)
    text = model.tokenizer.detokenize(tf.constant(new)).numpy().decode()
    names = tuple(info["names"]) + tuple(info["speakers"]) + ("HOLT",)
    expected = dialogue._tidy(dialogue._cut_at_next_turn(text, names))

    output = tmp_path / "answers.json"
    completed = _chat([run_dir, *settings, "--questions", str(questions), "--output", str(output)])
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout == f"HOLT: {QUESTION}\nTRUMP: {expected}\n\n"
    assert json.load(open(output)) == [{"question": QUESTION, "speaker": "TRUMP",
                                        "answer": expected}]

    script = f"{QUESTION}\n\nAnd taxes?\nquit\nnever asked\n"
    completed = _chat([run_dir, *settings], stdin=script)
    assert completed.returncode == 0, completed.stderr[-3000:]
    lines = completed.stdout.splitlines()
    assert len(lines) == 2 and all(line.startswith("TRUMP: ") for line in lines)
    assert lines[0] == f"TRUMP: {expected}"  # the first question has no history yet


def test_chat_keeps_the_recent_turns_as_context(dialogue_run):
    model, _ = dialogue.load_generator(dialogue_run[0])
    conversation = dialogue.Chat(model, "CLINTON", "WALLACE",
                                 generate_kwargs={"max_new_tokens": 4, "sampler": "greedy"})
    for question in ("First?", "Second?", "Third?"):
        conversation.ask(question)
    assert len(conversation.history) == 6
    assert conversation.history[-2] == "WALLACE: Third?"
    assert conversation.history[-1].startswith("CLINTON: ")
    answers = io.StringIO()
    dialogue.chat(dialogue_run[0], "pence", stdin=io.StringIO("Hello?\nexit\n"), stdout=answers,
                  max_new_tokens=4, sampler="greedy", temperature=1.0, top_p=None)
    assert answers.getvalue().startswith("PENCE: ") and answers.getvalue().count("\n") == 1


@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda run, tmp: ["chat", str(tmp / "nowhere")], "No run directory at"),
        (lambda run, tmp: ["chat", str(tmp)], "is not a pretraining or dialogue run directory"),
        (lambda run, tmp: ["chat", run, "--as", "obama"],
         "Unknown speaker 'obama': this model can answer as one of "
         "['CLINTON', 'KAINE', 'PENCE', 'TRUMP']"),
        (lambda run, tmp: ["chat", run, "--questions", str(tmp / "empty.txt")],
         "empty.txt' is empty: write one question a line"),
        (lambda run, tmp: ["chat", run, "--questions", str(tmp / "missing.txt")],
         "No such file or directory"),
        (lambda run, tmp: ["dialogue", "finetune", "--pretrained", str(tmp / "nowhere"),
                           "--run-dir", str(tmp / "out")], "No run directory at"),
        (lambda run, tmp: ["dialogue"], "choose an action"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(dialogue_run, tmp_path, capsys, make_args,
                                               message):
    (tmp_path / "empty.txt").write_text("\n  \n")
    assert cli.main(make_args(dialogue_run[0], tmp_path)) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()  # a bad --pretrained writes nothing
