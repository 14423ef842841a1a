"""`keras-llm` command line (also `python -m keras_llm`).

Thin: it parses arguments, builds configs from presets (plus an optional JSON file and flags)
and calls the public API. Bad arguments print one `keras-llm: error: ...` line and exit 2.
"""

import argparse
import dataclasses
import json
import os
import sys
import time

import keras_llm
from keras_llm.config import ModelConfig, TrainConfig

EXAMPLES = (
    "A gripping, beautifully acted film that stays with you long after the credits.",
    "A tedious mess: flat jokes, wooden acting and a plot that goes nowhere.",
)


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(2)


class UsageError(ValueError):
    """A bad command-line value; printed as one line, exit code 2."""


def _configs(args, default_train_preset):
    """ModelConfig and TrainConfig from presets, then `--config` JSON, then flags."""
    try:
        return _build_configs(args, default_train_preset)
    except ValueError as error:  # a config value out of range: the message names it
        raise UsageError(str(error)) from None


def _build_configs(args, default_train_preset):
    model = ModelConfig.preset(getattr(args, "preset", "small"))
    train = TrainConfig.preset(args.train_preset or default_train_preset)
    if args.config:
        try:
            with open(args.config) as f:
                overrides = json.load(f)
        except (OSError, json.JSONDecodeError) as error:
            raise UsageError(f"cannot read --config {args.config!r}: {error}") from None
        if not isinstance(overrides, dict) or not all(
            isinstance(value, dict) for value in overrides.values()
        ):
            raise UsageError(
                f"--config {args.config!r} must hold a JSON object {{'model': {{...}}, "
                f"'train': {{...}}}}. Received {overrides!r:.200}"
            )
        unknown = sorted(set(overrides) - {"model", "train"})
        if unknown:
            raise UsageError(
                f"--config file has unknown top-level keys {unknown}; use {{'model': {{...}}, "
                "'train': {...}}} with ModelConfig / TrainConfig fields"
            )
        model = ModelConfig.from_dict({**model.to_dict(), **overrides.get("model", {})})
        train = TrainConfig.from_dict({**train.to_dict(), **overrides.get("train", {})})
    flags = {"seed": args.seed, "strategy": args.strategy, "precision": args.precision}
    if getattr(args, "steps", None) is not None:
        flags["pretrain_steps"] = args.steps
    if getattr(args, "epochs", None) is not None:
        flags["finetune_epochs"] = args.epochs
    train = dataclasses.replace(train, **{k: v for k, v in flags.items() if v is not None})
    return model, train


def _add_common(parser, default_run_dir, model_preset=True):
    parser.add_argument("--run-dir", default=default_run_dir, help="output directory")
    if model_preset:  # commands that continue a pretrained run take its model instead
        parser.add_argument("--preset", default="small", choices=sorted(ModelConfig.PRESETS),
                            help="model size preset (default: small)")
    parser.add_argument("--train-preset", choices=sorted(TrainConfig.PRESETS),
                        help="training preset (default: as the command says)")
    parser.add_argument("--config", help="JSON file: {'model': {...}, 'train': {...}} overrides")
    parser.add_argument("--seed", type=int, help="random seed")
    parser.add_argument("--strategy", choices=["default", "mirrored", "multi_worker"],
                        help="tf.distribute strategy")
    parser.add_argument("--precision", choices=["auto", "float32", "mixed_bfloat16"],
                        help="dtype policy (default: auto, mixed_bfloat16 only where the "
                        "hardware computes bfloat16 natively)")
    parser.add_argument("--data-dir", help="tensorflow-datasets directory")


def build_parser():
    parser = _Parser(
        prog="keras-llm",
        description="Pretrain, fine-tune, evaluate and export keras_llm Transformers.",
    )
    parser.add_argument("--version", action="version", version=keras_llm.__version__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for add in (_add_training_commands, _add_evaluate_and_export, _add_studies,
                _add_generation_commands, _add_digits, _add_launch):
        add(sub)
    return parser


def _add_training_commands(sub):
    quick = sub.add_parser(
        "quickstart",
        help="the whole job offline: tokenizer, pretrain, fine-tune, evaluate, export, serve",
    )
    quick.add_argument("--quick", action="store_true",
                       help="a short run (about 2 minutes) for CI and smoke tests")
    _add_common(quick, "runs/quickstart")

    pre = sub.add_parser("pretrain", help="pretrain a causal language model")
    pre.add_argument("--dataset", default="keras_llm_corpus", help="pretraining data set name")
    pre.add_argument("--steps", type=int, help="optimizer steps (overrides the preset)")
    pre.add_argument("--objective", default="causal", choices=["causal", "mlm"],
                     help="causal: next-token prediction (GPT-style decoder, default); mlm: "
                     "BERT's masked-LM (a bidirectional encoder, for fine-tuning)")
    _add_common(pre, "runs/pretrain")

    fine = sub.add_parser("finetune", help="fine-tune a classifier (pretrained or from scratch)")
    fine.add_argument("--dataset", default="rotten_tomatoes", help="classification data set")
    fine.add_argument(
        "--pretrained",
        help="pretraining run directory, a published checkpoint (all-MiniLM-L6-v2: trains "
        "with --train-preset checkpoint unless given) or a Hugging Face BERT folder "
        "(omit: from scratch)",
    )
    fine.add_argument("--epochs", type=int, help="fine-tuning epochs")
    fine.add_argument("--train-examples", type=int,
                      help="a label budget: train on a seeded, class-stratified subset of this "
                      "many labelled examples (default: the whole train split)")
    fine.add_argument("--pooling", default="mean", choices=["mean", "last"])
    _add_common(fine, "runs/finetune")


def _add_evaluate_and_export(sub):
    ev = sub.add_parser("evaluate", help="accuracy, precision, recall, F1 of a fine-tuning run")
    ev.add_argument("run_dir", help="fine-tuning run directory")
    ev.add_argument("--split", default="test", help="split to evaluate (default: test)")
    ev.add_argument("--data-dir", help="tensorflow-datasets directory")

    ex = sub.add_parser("export", help="SavedModels (raw strings in), int8 and TFLite variants")
    ex.add_argument("run_dir", help="fine-tuning (or pretraining) run directory")
    ex.add_argument("--output-dir", help="default: RUN_DIR/export")
    ex.add_argument("--split", default="test", help="split to measure F1 on (default: test)")
    ex.add_argument("--data-dir", help="tensorflow-datasets directory")
    ex.add_argument("--no-quantize", action="store_true", help="skip the int8 variants")
    ex.add_argument("--no-tflite", action="store_true", help="skip the TFLite files")


def transfer_arms(every=False):
    """The transfer study's arms (`keras_llm.transfer`), without importing TensorFlow."""
    arms = ("tfidf", "scratch", "causal", "mlm", "checkpoint")
    return arms + ("probe",) if every else arms


def _add_studies(sub):
    study = sub.add_parser("study", help="measured studies")
    studies = study.add_subparsers(dest="study", metavar="STUDY", parser_class=_Parser)
    transfer = studies.add_parser(
        "transfer", help="what pretraining buys, label budget by label budget: TF-IDF, "
        "scratch, causal-LM and masked-LM pretraining, all-MiniLM-L6-v2 on rotten_tomatoes",
    )
    transfer.add_argument("--run-dir", default="runs/transfer")
    transfer.add_argument("--budgets", default="100,300,1000,3000,all",
                          help="labelled training reviews per run, comma-separated; 'all' is "
                          "the whole split (default: 100,300,1000,3000,all)")
    transfer.add_argument("--seeds", default="0,1,2", help="comma-separated (default: 0,1,2)")
    transfer.add_argument("--large-budget", type=int, default=3000,
                          help="budgets from this size on (and 'all') run with fewer seeds "
                          "(default: 3000)")
    transfer.add_argument("--large-budget-seeds", type=int, default=1,
                          help="seeds of the large budgets, the first ones (default: 1)")
    transfer.add_argument("--arms", default=",".join(transfer_arms()),
                          help=f"comma-separated, of {','.join(transfer_arms(True))} "
                          f"(default: {','.join(transfer_arms())})")
    transfer.add_argument("--pretrain-steps", type=int,
                          help="per objective (default: transfer.STUDY_TRAIN_CONFIG's)")
    transfer.add_argument("--finetune-epochs", type=int, help="default: 3")
    transfer.add_argument("--min-steps", type=int,
                          help="fine-tuning steps a small budget takes at least (default: 90)")
    transfer.add_argument("--pretrain-per-seed", action="store_true",
                          help="pretrain once per seed (the spread then includes pretraining)")
    transfer.add_argument("--pooling", default="mean", choices=["mean", "last"])
    for arm in transfer_arms(True)[1:]:
        transfer.add_argument(f"--lr-{arm}", type=float, help=f"peak learning rate ({arm})")
    for arm in transfer_arms(True)[1:]:
        transfer.add_argument(f"--layer-decay-{arm}", type=float,
                              help=f"layer-wise learning-rate decay in (0, 1] ({arm}; 1: off)")
    transfer.add_argument("--data-dir", help="tensorflow-datasets directory")
    transfer.add_argument("--quick", action="store_true",
                          help="tiny model, few steps, budgets 100 and all, one seed, no "
                          "checkpoint arm unless --arms names it: checks the machinery only")
    speakers = studies.add_parser(
        "speakers", help="who is speaking? TF-IDF vs scratch vs pretrained on debates_speakers"
    )
    speakers.add_argument("--pretrained", required=True, help="pretraining run directory")
    speakers.add_argument("--run-dir", default="runs/speakers")
    speakers.add_argument("--seeds", default="0,1,2", help="comma-separated (default: 0,1,2)")
    speakers.add_argument("--data-dir", help="tensorflow-datasets directory")
    speakers.add_argument("--quick", action="store_true",
                          help="a few steps, one seed: checks the machinery only")


def _add_sampling(parser, temperature, temperature_help=None):
    """The decoding options `generate` and `chat` share."""
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--sampler", default="top_p",
                        choices=["greedy", "random", "top_k", "top_p"])
    parser.add_argument("--temperature", type=float, default=temperature, help=temperature_help)
    parser.add_argument("--top-k", type=int, default=40)
    parser.add_argument("--top-p", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)


def _add_generation_commands(sub):
    gen = sub.add_parser("generate", help="continue prompts with a pretraining run's model")
    gen.add_argument("run_dir", help="pretraining run directory")
    gen.add_argument("prompts", nargs="+", help="one or more prompts")
    _add_sampling(gen, None, "sampling temperature (default: 0.8; 1 for greedy)")

    dia = sub.add_parser("dialogue", help="fine-tune a pretraining run on the 2016 debate turns")
    dia_actions = dia.add_subparsers(dest="dialogue", metavar="ACTION", parser_class=_Parser)
    dia_fine = dia_actions.add_parser(
        "finetune", help="answer perplexity before/after, QA on held-out questions, samples"
    )
    dia_fine.add_argument("--pretrained", required=True, help="pretraining run directory")
    dia_fine.add_argument("--epochs", type=int, help="fine-tuning epochs")
    dia_fine.add_argument("--samples", type=int, default=5,
                          help="held-out test questions to answer in samples.json (default: 5)")
    _add_common(dia_fine, "runs/dialogue", model_preset=False)

    chat = sub.add_parser("chat", help="be the moderator: a dialogue run answers as a candidate")
    chat.add_argument("run_dir", help="dialogue run directory (keras-llm dialogue finetune)")
    chat.add_argument("--as", dest="speaker", default="TRUMP",
                      help="who answers (default: TRUMP; see the run's dialogue.json)")
    chat.add_argument("--moderator", default="HOLT", help="your name in the prompt (default: HOLT)")
    chat.add_argument("--questions", help="file of questions, one a line: answer them and exit")
    chat.add_argument("--output", help="with --questions, also write the answers to this JSON file")
    _add_sampling(chat, 0.8)


def _add_digits(sub):
    dig = sub.add_parser("digits", help="multimodal: a Transformer on 8x8 digit image patches")
    dig_tasks = dig.add_subparsers(dest="task", metavar="TASK", parser_class=_Parser)
    for task, task_help in (
        ("classify", "image classifier: patches -> blocks -> 10 classes, test accuracy"),
        ("caption", "image-to-text causal LM writing 'this is a seven', caption accuracy"),
    ):
        digit = dig_tasks.add_parser(task, help=task_help)
        digit.add_argument("run_dir", help="output directory")
        digit.add_argument("--epochs", type=int, help="training epochs")
        digit.add_argument("--seed", type=int, help="random seed (weights, shuffling)")
        digit.add_argument("--patch-size", default="2x2",
                           help="'2x2' (16 tokens, default), 'rows' (8 tokens), 'HxW' or an int")
        digit.add_argument("--quick", action="store_true", help="a small model, 3 epochs")
        digit.add_argument("--export", action="store_true", help="also write RUN_DIR/export")


def _add_launch(sub):
    launch = sub.add_parser(
        "launch",
        help="run a training command on N local workers (MultiWorkerMirroredStrategy)",
        description="Starts COMMAND on N local workers with TF_CONFIG set (free 127.0.0.1 "
        "ports); keras-llm pretrain/finetune get --strategy multi_worker. The chief's output "
        "is shown; a failing worker stops all. Example: keras-llm launch --workers 2 -- "
        "keras-llm pretrain --run-dir runs/pretrain",
    )
    launch.add_argument("--workers", type=int, default=2, help="number of workers (default: 2)")
    launch.add_argument("--log-dir", help="non-chief workers' logs (default: a temporary dir)")
    launch.add_argument("worker_command", nargs=argparse.REMAINDER, metavar="-- COMMAND",
                        help="the command every worker runs")


def _print_table(rows, headers):
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    print(line.format(*headers))
    print(line.format(*("-" * w for w in widths)))
    for row in rows:
        print(line.format(*row))


def _format_metrics(metrics):
    return {k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in metrics.items()}


def _check_output_path(flag, path):
    """An output directory must be a directory or creatable as one: refused up front, with
    one line, instead of failing after work has started."""
    if path is None:
        return
    path = os.path.abspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"{flag} {path!r} exists and is not a directory; pass a directory")
    parent = path
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise UsageError(f"{flag} {path!r} cannot be created: {parent!r} is a file, not a "
                         "directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path!r} cannot be created: {parent!r} is not writable")


# Flags (argparse destinations) that name a directory a command writes into.
_OUTPUT_DIRECTORIES = {"run_dir": "--run-dir", "output_dir": "--output-dir",
                       "data_dir": "--data-dir"}
_READ_ONLY_RUN_DIR = ("evaluate", "export", "generate", "chat")


def check_paths(args):
    """Refuses an output directory that cannot be one (an existing file, a file on its way,
    no write permission) before any command creates anything."""
    for dest, flag in _OUTPUT_DIRECTORIES.items():
        if dest == "run_dir" and args.command in _READ_ONLY_RUN_DIR:
            continue  # read: the command itself says when it is not a run directory
        if dest == "run_dir" and args.command == "digits":
            flag = "RUN_DIR"
        _check_output_path(flag, getattr(args, dest, None))
    output = getattr(args, "output", None)
    if output is not None and os.path.isdir(output):
        raise UsageError(f"--output {output!r} is a directory; pass a JSON file path")


def _check_dataset(name, task):
    """A `--dataset` the catalog does not know is a usage error, before any work starts."""
    from keras_llm import data

    try:
        data.dataset_spec(name, task)
    except ValueError as error:
        raise UsageError(f"--dataset: {error}") from None


def cmd_pretrain(args):
    from keras_llm import training

    model, train = _configs(args, "small")
    if args.objective == "mlm":  # the same preset as a bidirectional encoder
        model = dataclasses.replace(model, causal=False)
    _check_dataset(args.dataset, "pretraining")
    result = training.pretrain(model, train, data=args.dataset, run_dir=args.run_dir,
                               data_dir=args.data_dir, objective=args.objective)
    _print_table(sorted(_format_metrics(result.metrics).items()), ["metric", "value"])
    print(f"\nPretraining run written to {os.path.abspath(result.run_dir)}")
    return 0


def cmd_finetune(args):
    from keras_llm import presets, training

    # A published checkpoint fine-tunes with BERT's recipe unless --train-preset says else.
    published = args.pretrained is not None and presets.is_preset(args.pretrained)
    model, train = _configs(args, "checkpoint" if published else "small")
    _check_dataset(args.dataset, "classification")
    if args.train_examples is not None:
        train = _label_budget(train, args.train_examples, args.dataset, args.data_dir)
    result = training.finetune(
        train, data=args.dataset, run_dir=args.run_dir, pretrained=args.pretrained,
        model_config=None if args.pretrained else model, data_dir=args.data_dir,
        pooling=args.pooling,
    )
    _print_table(sorted(_format_metrics(result.metrics).items()), ["metric", "value"])
    print(f"\nFine-tuning run written to {os.path.abspath(result.run_dir)}")
    return 0


def _label_budget(train, size, dataset, data_dir):
    """`train` with `train_examples=size`, refused now when it does not fit the split."""
    from keras_llm import data

    try:
        train = dataclasses.replace(train, train_examples=size)
        if size:
            data.stratified_indices(data.load_texts_and_labels(dataset, "train", data_dir)[1],
                                    size, train.seed)
    except ValueError as error:
        raise UsageError(f"--train-examples: {error}") from None
    return train


def cmd_evaluate(args):
    from keras_llm import data, evaluation

    try:
        metrics, report = evaluation.evaluate_run(
            args.run_dir, split=args.split, data_dir=args.data_dir
        )
    except data.UnknownSplitError as error:
        raise UsageError(f"--split: {error}") from None
    print(evaluation.format_report(report))
    print()
    _print_table(sorted(_format_metrics(metrics).items()), ["model.evaluate", "value"])
    return 0


def _print_export_report(report):
    rows = []
    evaluation = report.get("evaluation", {})
    for name, size in report["sizes"].items():
        measured = evaluation.get(name, {})
        f1 = measured.get("macro_f1")
        rows.append((name, f"{size / 1e6:.2f} MB", "" if f1 is None else f"{f1:.4f}"))
    _print_table(rows, ["artifact", "size", "macro-F1"])


def cmd_export(args):
    from keras_llm import data, export

    try:  # the split is read before anything is written
        report = export.export_all(
            args.run_dir, output_dir=args.output_dir, split=args.split, data_dir=args.data_dir,
            quantize=not args.no_quantize, tflite=not args.no_tflite,
        )
    except data.UnknownSplitError as error:
        raise UsageError(f"--split: {error}") from None
    _print_export_report(report)
    print(f"\nWritten to {os.path.abspath(report['output_dir'])}")
    return 0


def cmd_generate(args):
    from keras_llm import training

    model = training.load_run(args.run_dir)
    if not hasattr(model, "generate"):
        raise UsageError(f"{args.run_dir!r} holds a classifier; generate needs a pretraining run")
    temperature = args.temperature
    if temperature is None:  # greedy ignores the temperature and refuses one other than 1
        temperature = 1.0 if args.sampler == "greedy" else 0.8
    try:
        texts = model.generate(
            args.prompts, max_new_tokens=args.max_new_tokens, sampler=args.sampler,
            temperature=temperature, top_k=args.top_k if args.sampler == "top_k" else None,
            top_p=args.top_p if args.sampler == "top_p" else None, seed=args.seed,
        )
    except ValueError as error:  # a bad prompt or sampling argument: the message names it
        raise UsageError(str(error)) from None
    for text in texts:
        print(text)
        print("---")
    return 0


def cmd_dialogue(args):
    from keras_llm.applications import dialogue

    if args.dialogue != "finetune":
        raise UsageError("choose an action: keras-llm dialogue finetune --pretrained RUN_DIR")
    if args.samples < 0:
        raise UsageError(f"--samples must be >= 0 (held-out questions), got {args.samples}")
    _, train = _configs(args, "small")
    result = dialogue.finetune_dialogue(
        args.pretrained, args.run_dir, train, data_dir=args.data_dir,
        sample_count=args.samples, verbose=2,
    )
    m = result.metrics
    rows = [
        (f"{name} ({m[f'{name}_examples']} turns, {m[f'{name}_answer_tokens']} tokens)",
         *(f"{m[f'{name}_answer_perplexity_{when}']:.1f}" for when in ("before", "after")))
        for name in ("validation", "test", "test_qa")
    ]
    print()
    _print_table(rows, ["answer perplexity", "before", "after"])
    for sample in dialogue.read_samples(result.run_dir):
        real = sample["real_answer"]
        print(f"\n{sample['question']}\n  {sample['speaker']} (real):   "
              f"{real if len(real) < 200 else real[:200] + ' ...'}")
        print(f"  {sample['speaker']} (greedy): {sample['after_greedy']}")
        print(f"  {sample['speaker']} (top-p):  {sample['after_top_p']}")
    print(f"\nDialogue run written to {os.path.abspath(result.run_dir)} ({m['seconds']:.0f}s); "
          f"talk to it: keras-llm chat {result.run_dir}")
    return 0


def cmd_chat(args):
    from keras_llm.applications import dialogue

    try:
        dialogue.chat(
            args.run_dir, args.speaker, questions_file=args.questions, output_file=args.output,
            moderator=args.moderator, max_new_tokens=args.max_new_tokens, sampler=args.sampler,
            temperature=1.0 if args.sampler == "greedy" else args.temperature,
            top_k=args.top_k if args.sampler == "top_k" else None,
            top_p=args.top_p if args.sampler == "top_p" else None, seed=args.seed,
        )
    except ValueError as error:  # unknown speaker, empty question file, bad sampler values
        raise UsageError(str(error)) from None
    return 0


def cmd_study_speakers(args, seeds):
    from keras_llm.applications import speakers

    results = speakers.speakers_study(
        args.pretrained, args.run_dir, seeds=seeds[:1] if args.quick else seeds,
        train_config=speakers.quick_train_config() if args.quick else None,
        data_dir=args.data_dir,
    )
    print(speakers.format_speakers_table(results))
    print(f"\nWritten to {os.path.abspath(args.run_dir)} (speakers.md, speakers.json)")
    return 0


def cmd_study(args):

    if args.study not in ("transfer", "speakers"):
        raise UsageError("choose a study: keras-llm study transfer | speakers")
    try:
        seeds = tuple(int(seed) for seed in args.seeds.split(","))
    except ValueError:
        raise UsageError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
    if any(not 0 <= seed < 2**32 for seed in seeds):
        raise UsageError(f"--seeds must be integers in [0, 2**32), got {args.seeds!r}")
    if args.study == "speakers":
        return cmd_study_speakers(args, seeds)
    return cmd_study_transfer(args, seeds)


def cmd_study_transfer(args, seeds):
    from keras_llm import transfer

    budgets = [part.strip() for part in args.budgets.split(",")]
    try:
        budgets = [part if part == "all" else int(part) for part in budgets]
    except ValueError:
        raise UsageError(f"--budgets must be comma-separated integers and/or 'all', got "
                         f"{args.budgets!r}") from None
    arms = tuple(part.strip() for part in args.arms.split(","))
    rates = {arm: getattr(args, f"lr_{arm}") for arm in transfer_arms(True)[1:]}
    decays = {arm: getattr(args, f"layer_decay_{arm}") for arm in transfer_arms(True)[1:]}
    options = dict(
        budgets=budgets, seeds=seeds, arms=arms, large_budget=args.large_budget,
        large_budget_seeds=args.large_budget_seeds, pretrain_steps=args.pretrain_steps,
        finetune_epochs=args.finetune_epochs,
        min_finetune_steps=(transfer.MIN_FINETUNE_STEPS if args.min_steps is None
                            else args.min_steps),
        learning_rates={arm: rate for arm, rate in rates.items() if rate is not None},
        layer_decays={arm: decay for arm, decay in decays.items() if decay is not None},
        pooling=args.pooling,
    )
    model_config, train_config = None, None  # the study's tuned defaults
    if args.quick:
        model_config = ModelConfig.preset("tiny")
        train_config = dataclasses.replace(
            transfer.STUDY_TRAIN_CONFIG, pretrain_steps=100, finetune_epochs=1,
            finetune_steps_per_epoch=40, classifier_sequence_length=32,
        )
    try:  # the values as given; --quick then narrows them
        transfer.check_transfer_study(model_config, train_config, data="rotten_tomatoes",
                                      data_dir=args.data_dir, **options)
    except ValueError as error:  # a value out of range: the message names it
        raise UsageError(str(error)) from None
    if args.quick:
        options.update(seeds=seeds[:1], large_budget_seeds=1)
        if args.min_steps is None:
            options["min_finetune_steps"] = 30
        if args.budgets == "100,300,1000,3000,all":
            options["budgets"] = [100, "all"]
        if args.arms == ",".join(transfer_arms()):
            options["arms"] = tuple(arm for arm in arms if arm != "checkpoint")
    transfer.transfer_study(
        model_config, train_config, args.run_dir, pretrain_per_seed=args.pretrain_per_seed,
        data_dir=args.data_dir, **options,
    )
    with open(os.path.join(args.run_dir, "transfer.md")) as f:
        print(f.read())
    print(f"Written to {os.path.abspath(args.run_dir)} (transfer.md, transfer.json, transfer.png)")
    return 0


def _finetune_batches(train, pretrain_dir, data_dir):
    """`(steps, mean width)` of the quickstart's fine-tuning, from the pretraining run's
    tokenizer and the preset's length buckets: what the time estimates need."""
    from keras_llm import data

    tokenizer = data.Tokenizer.load(os.path.join(pretrain_dir, "tokenizer"))
    pairs = data.load_text_classification("rotten_tomatoes", "train", data_dir)
    batches = data.classification_dataset(
        pairs, tokenizer, train.classifier_sequence_length, train.batch_size,
        bucket_boundaries=train.length_buckets or None,
    )
    widths = [int(ids.shape[1]) for ids, _ in batches]
    per_epoch = train.finetune_steps_per_epoch or len(widths)
    return per_epoch * train.finetune_epochs, sum(widths) / len(widths)


def _quickstart_header(args, model, train):
    """Prints what will run, on what machine, in which precision; returns the float32 peak."""
    from keras_llm import hardware

    machine = hardware.detect()
    peak = hardware.matmul_peak()
    print(f"keras_llm quickstart ({'quick' if args.quick else 'full'}): model preset "
          f"{args.preset!r}, {train.pretrain_steps} pretraining steps, "
          f"{train.finetune_epochs} fine-tuning epoch(s)")
    print(f"machine: {hardware.describe(machine, peak)}")
    hardware.announce_precision(*hardware.choose_precision(train.precision, machine))
    return peak


def cmd_quickstart(args):
    from keras_llm import callbacks, export, training

    start = time.perf_counter()
    model, train = _configs(args, "quick" if args.quick else "small")
    pretrain_dir = os.path.join(args.run_dir, "pretrain")
    finetune_dir = os.path.join(args.run_dir, "finetune")
    export_dir = os.path.join(finetune_dir, "export")
    peak = _quickstart_header(args, model, train)
    counted = {}  # the fine-tuning's (steps, mean width), counted once the tokenizer exists

    def finetune_work():  # in pretraining steps, by FLOPs: no vocabulary head, fewer tokens
        counted["batches"] = _finetune_batches(train, pretrain_dir, args.data_dir)
        steps, width = counted["batches"]
        per_token = callbacks.training_flops_per_token
        lm = model.sequence_length * per_token(model, model.sequence_length)
        return steps * width * per_token(model, train.classifier_sequence_length, 2) / lm

    print("\n[1/4] Pretraining a causal LM on keras_llm_corpus (tokenizer trained first)")
    pre = training.pretrain(
        model, train, data="keras_llm_corpus", run_dir=pretrain_dir, data_dir=args.data_dir,
        peak_flops=peak, verbose=2, callbacks=[callbacks.TimeLeft(
            train.pretrain_steps, label="pretraining", then=finetune_work,
            then_label="fine-tuning at the same FLOP/s")],
    )
    print("\n[2/4] Fine-tuning a sentiment classifier on rotten_tomatoes")
    if "batches" not in counted:  # a resumed run that needed no estimate
        counted["batches"] = _finetune_batches(train, pretrain_dir, args.data_dir)
    finetune_steps = counted["batches"][0]
    fine = training.finetune(
        train, data="rotten_tomatoes", run_dir=finetune_dir, pretrained=pretrain_dir,
        data_dir=args.data_dir, peak_flops=peak, verbose=2,
        callbacks=[callbacks.TimeLeft(finetune_steps, label="fine-tuning")],
    )
    print("\n[3/4] Exporting SavedModels that take raw strings (float, int8) and TFLite")
    report = export.export_all(finetune_dir, output_dir=export_dir, data_dir=args.data_dir,
                               quantize=not args.quick, tflite=not args.quick)
    _print_export_report(report)
    saved_model = report["artifacts"]["classifier"]
    print("\n[4/4] Reloading the SavedModel and classifying two sentences")
    _classify_examples(saved_model)
    _print_quickstart_summary(pre, fine)
    print(f"\nTotal {time.perf_counter() - start:.0f}s. Written:")
    print(f"  pretraining run   {os.path.abspath(pretrain_dir)}")
    print(f"  fine-tuning run   {os.path.abspath(finetune_dir)}")
    print(f"  SavedModel        {os.path.abspath(saved_model)}")
    return 0


def _classify_examples(saved_model):
    """Reloads the exported SavedModel in this process and prints its labels of `EXAMPLES`."""
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (registers the tokenizer's ops for the reload)

    from keras_llm import export

    served = export.load_saved_model(saved_model).signatures["serving_default"]
    outputs = served(text=tf.constant(EXAMPLES))
    for text, label, probabilities in zip(
        EXAMPLES, outputs["label"].numpy(), outputs["probabilities"].numpy()
    ):
        print(f"  {label.decode():>6}  p={probabilities.max():.3f}  {text}")


def _print_quickstart_summary(pre, fine):
    print("\nSummary")
    rows = [
        ("pretrain", f"{pre.seconds:.0f}s", "validation perplexity",
         f"{pre.metrics.get('validation_perplexity', float('nan')):.1f}"),
        ("finetune", f"{fine.seconds:.0f}s", "test accuracy",
         f"{fine.metrics['test_accuracy']:.4f}"),
        ("", "", "test precision (macro)", f"{fine.metrics['test_precision']:.4f}"),
        ("", "", "test recall (macro)", f"{fine.metrics['test_recall']:.4f}"),
        ("", "", "test F1 (macro)", f"{fine.metrics['test_f1']:.4f}"),
    ]
    _print_table(rows, ["stage", "time", "metric", "value"])


def cmd_digits(args):
    from keras_llm.applications import multimodal

    if args.task not in ("classify", "caption"):
        raise UsageError("choose a task: keras-llm digits classify|caption RUN_DIR")
    try:
        patch_size = multimodal.parse_patch_size(args.patch_size)
    except ValueError as error:
        raise UsageError(str(error)) from None
    if args.epochs is not None and args.epochs < 1:
        raise UsageError(f"--epochs must be at least 1, got {args.epochs}")
    if args.seed is not None and not 0 <= args.seed < 2**32:
        raise UsageError(f"--seed must be an integer in [0, 2**32), got {args.seed}")
    train = (multimodal.train_digit_classifier if args.task == "classify"
             else multimodal.train_digit_captioner)
    result = train(args.run_dir, patch_size=patch_size, epochs=args.epochs, seed=args.seed,
                   quick=args.quick, export=args.export, verbose=2)
    metrics = result.metrics
    rows = [(k, f"{v:.4f}" if isinstance(v, float) else v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)]
    rows.append(("baseline: logistic regression on pixels, test accuracy",
                 f"{metrics['baseline']['test_accuracy']:.4f}"))
    _print_table(rows, ["metric", "value"])
    print(f"\nRun written to {os.path.abspath(result.run_dir)} (predictions.png, metrics.json)")
    return 0


def cmd_launch(args):
    from keras_llm import launch

    command = args.worker_command[1:] if args.worker_command[:1] == ["--"] else args.worker_command
    if args.workers < 1:
        raise UsageError(f"--workers must be >= 1. Received --workers {args.workers}.")
    try:
        command = launch.with_strategy(command)
    except ValueError as error:
        raise UsageError(str(error)) from None
    return launch.launch(command, args.workers, log_dir=args.log_dir)


COMMANDS = {
    "quickstart": cmd_quickstart,
    "pretrain": cmd_pretrain,
    "finetune": cmd_finetune,
    "evaluate": cmd_evaluate,
    "export": cmd_export,
    "generate": cmd_generate,
    "study": cmd_study,
    "digits": cmd_digits,
    "dialogue": cmd_dialogue,
    "chat": cmd_chat,
    "launch": cmd_launch,
}


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    from keras_llm.run_loop import RunDirectoryInUseError

    try:
        check_paths(args)
        return COMMANDS[args.command](args)
    except (UsageError, FileNotFoundError) as error:
        sys.stderr.write(f"keras-llm {args.command}: error: {error}\n")
        return 2
    except (RunDirectoryInUseError, keras_llm.DamagedFileError, OSError) as error:
        # another process trains into --run-dir; a file to read is truncated or altered; a
        # write failed (full disk): the message names the file
        sys.stderr.write(f"keras-llm {args.command}: error: {error}\n")
        return 1
    except FloatingPointError as error:  # training.TrainingDivergedError
        sys.stderr.write(f"keras-llm {args.command}: {error}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
