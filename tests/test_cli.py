"""The `keras-llm` command line: help, one-line errors with exit code 2, the quickstart."""

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keras_llm import cli, run_loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["pretrain", "--preset", "huge"], "invalid choice: 'huge'"),
        (["pretrain", "--seed", "x"], "invalid int value: 'x'"),
        (["finetune", "--pooling", "max"], "invalid choice: 'max'"),
        (["nonsense"], "invalid choice: 'nonsense'"),
        # The dialogue fine-tune continues the pretrained run's model: no size preset to pick.
        (["dialogue", "finetune", "--pretrained", "x", "--preset", "tiny"],
         "unrecognized arguments: --preset tiny"),
    ],
)
def test_bad_arguments_give_one_line_and_exit_code_2(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_bad_config_values_are_usage_errors(tmp_path, capsys):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model": {"hidden_dim": 30, "num_heads": 4}}))
    assert cli.main(["pretrain", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert "hidden_dim=30, num_heads=4" in err and len(err.splitlines()) == 1
    config.write_text(json.dumps({"modle": {}}))
    assert cli.main(["pretrain", "--config", str(config)]) == 2
    assert "unknown top-level keys ['modle']" in capsys.readouterr().err


@pytest.mark.parametrize("command, task", [("finetune", "classification"),
                                           ("pretrain", "pretraining")])
def test_unknown_dataset_is_one_line_before_any_work(command, task, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert cli.main([command, "--dataset", "nope", "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"Unknown {task} data set 'nope'" in err and len(err.splitlines()) == 1, err
    assert not run_dir.exists()


def test_missing_run_directory_is_one_line(tmp_path, capsys):
    assert cli.main(["export", str(tmp_path / "nowhere")]) == 2
    assert "not a keras_llm run directory" in capsys.readouterr().err


def test_help_of_every_subcommand(capsys):
    for command in ("quickstart", "pretrain", "finetune", "evaluate", "export", "generate"):
        with pytest.raises(SystemExit) as stop:
            cli.main([command, "--help"])
        assert stop.value.code == 0
        assert f"keras-llm {command}" in capsys.readouterr().out


@pytest.mark.slow
def test_quickstart_quick_end_to_end(data_dir, tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "keras_llm", "quickstart", "--quick",
         "--run-dir", str(tmp_path), "--data-dir", data_dir],
        capture_output=True, text=True, cwd=REPO, timeout=900,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    out = completed.stdout
    for expected in ("[4/4]", "test F1 (macro)", "SavedModel", "fresh", "rotten"):
        assert expected in out
    assert os.path.isdir(tmp_path / "finetune" / "export" / "classifier")
    metrics = json.load(open(tmp_path / "finetune" / "metrics.json"))
    assert 0.5 < metrics["test_accuracy"] <= 1.0


def test_generate_greedy_and_bad_sampling_arguments(pretrained_run, capsys):
    argv = ["generate", pretrained_run, "the film", "--max-new-tokens", "4"]
    assert cli.main(argv + ["--sampler", "greedy"]) == 0
    greedy = capsys.readouterr().out
    assert greedy.startswith("the film") and greedy.rstrip().endswith("---")
    # The same greedy text again: greedy does not sample.
    assert cli.main(argv + ["--sampler", "greedy"]) == 0
    assert capsys.readouterr().out == greedy
    # Bad values name themselves in one line, exit 2, no traceback.
    assert cli.main(argv + ["--sampler", "top_p", "--top-p", "1.5"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "top_p" in err and "1.5" in err
    assert cli.main(argv[:3] + ["--max-new-tokens", "100000"]) == 2
    assert "100000" in capsys.readouterr().err


# -- property: no combination of bad flags gets past the parser's checks ----------------------

_NUMERIC_FIELDS = {
    "model": ["hidden_dim", "num_heads", "num_layers", "dropout", "sequence_length"],
    "train": ["batch_size", "pretrain_steps", "pretrain_learning_rate", "warmup_fraction",
              "clip_norm", "weight_decay", "seed", "freeze_backbone_epochs"],
}
_NOT_A_NUMBER = st.one_of(st.text(max_size=8), st.none(), st.lists(st.integers(), max_size=2))
_BAD_CONFIG = st.one_of(
    st.sampled_from(["[]", "3", '"model"', '{"model": 3}', '{"modle": {}}', "{not json",
                     '{"train": {"seed": -1}}', '{"model": {"hidden_dim": 30}}']),
    st.sampled_from(sorted(_NUMERIC_FIELDS)).flatmap(lambda part: st.builds(
        lambda field, value: json.dumps({part: {field: value}}),
        st.sampled_from(_NUMERIC_FIELDS[part]), _NOT_A_NUMBER,
    )),
)
_JUNK = st.text(alphabet="abcxyz-_/.%é", min_size=1, max_size=8).filter(
    lambda text: not text.startswith("-")
)
_NOT_POSITIVE = st.integers(max_value=0).map(str)
_NOT_AN_INT = st.one_of(_JUNK, st.floats(allow_nan=True).map(str))
_BAD_SEED = st.one_of(st.integers(max_value=-1), st.integers(min_value=2**32)).map(str)


def _flag(name, values):
    return st.tuples(st.just(name), values)


def _training_flags(paths):
    """Bad values of the flags every training command shares; `paths` names a file (not a
    directory) and a missing file inside the test's directory."""
    return [
        _flag("--train-preset", _JUNK),
        _flag("--seed", st.one_of(_BAD_SEED, _NOT_AN_INT)),
        _flag("--strategy", _JUNK),
        _flag("--precision", _JUNK),
        _flag("--config", st.one_of(st.just(paths["missing"]), _BAD_CONFIG.map(paths["config"]))),
        _flag("--run-dir", st.sampled_from([paths["file"], paths["file"] + "/run"])),
        _flag("--data-dir", st.just(paths["file"])),
        _flag("--no-such-flag", _JUNK),
    ]


def _bad_invocations(paths):
    """`(command words, [bad flag strategies], [good flags])` per command."""
    common = _training_flags(paths)
    missing = paths["missing"]
    return [
        (["pretrain"], common + [_flag("--dataset", _JUNK), _flag("--steps", _NOT_POSITIVE),
                                 _flag("--preset", _JUNK)], ["--preset", "tiny"]),
        (["finetune"], common + [_flag("--dataset", _JUNK), _flag("--epochs", _NOT_POSITIVE),
                                 _flag("--train-examples", st.integers(max_value=-1).map(str)),
                                 _flag("--pooling", _JUNK), _flag("--pretrained",
                                                                  st.just(missing))],
         ["--pooling", "last"]),
        (["quickstart"], common, ["--quick"]),
        (["dialogue", "finetune", "--pretrained", missing],
         common[:-2] + [_flag("--samples", st.integers(max_value=-1).map(str)),
                        _flag("--epochs", _NOT_POSITIVE)], ["--samples", "1"]),
        (["study", "transfer"],
         [_flag("--seeds", st.one_of(_JUNK, _BAD_SEED)), _flag("--arms", _JUNK),
          _flag("--pretrain-steps", _NOT_POSITIVE), _flag("--finetune-epochs", _NOT_POSITIVE),
          _flag("--lr-scratch", st.floats(max_value=0).map(str)),
          _flag("--budgets", st.one_of(_JUNK, _NOT_POSITIVE, st.just("100,100"))),
          _flag("--large-budget", _NOT_POSITIVE),
          _flag("--large-budget-seeds", st.sampled_from(["0", "4", "-1"])),
          _flag("--min-steps", _NOT_POSITIVE), _flag("--lr-mlm", st.just("-1e-3")),
          _flag("--layer-decay-causal", st.sampled_from(["0", "1.5", "-0.8", "nan"])),
          _flag("--pooling", _JUNK)], ["--quick"]),
        (["study", "speakers", "--pretrained", missing],
         [_flag("--seeds", st.one_of(_JUNK, _BAD_SEED))], ["--quick"]),
        (["digits", "classify", "run"],
         [_flag("--patch-size", _JUNK), _flag("--epochs", _NOT_POSITIVE),
          _flag("--seed", _BAD_SEED)], ["--quick"]),
        (["export", missing], [_flag("--output-dir", st.just(paths["file"])),
                               _flag("--split", _JUNK)], ["--no-tflite"]),
        (["evaluate", missing], [_flag("--split", _JUNK)], []),
        (["generate", missing, "a prompt"],
         [_flag("--max-new-tokens", _NOT_AN_INT), _flag("--sampler", _JUNK)], []),
    ]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_bad_flags_give_one_error_line_exit_2_and_write_nothing(data):
    with tempfile.TemporaryDirectory() as workdir, pytest.MonkeyPatch.context() as patch:
        paths = {"file": os.path.join(workdir, "a_file"),
                 "missing": os.path.join(workdir, "missing")}

        def write_config(text):
            config = os.path.join(workdir, "config.json")
            with open(config, "w") as f:
                f.write(text)
            return config

        paths["config"] = write_config
        open(paths["file"], "w").close()
        command, bad_flags, good = data.draw(st.sampled_from(_bad_invocations(paths)))
        chosen = data.draw(st.lists(st.sampled_from(bad_flags), min_size=1, max_size=2,
                                    unique_by=lambda flag: id(flag)))
        flags = [data.draw(flag) for flag in chosen]
        if data.draw(st.booleans()):
            flags.append(tuple(good))
        flags = data.draw(st.permutations(flags))
        argv = command + [word for flag in flags for word in flag]
        before = sorted(os.listdir(workdir))

        # No bad argument may start a run (a guard, so that a gap fails fast, not by training).
        def refuse(*args, **kwargs):
            raise AssertionError(f"a training run started for {argv}")

        patch.setattr(run_loop.TrainingRun, "__init__", refuse)
        patch.setenv("KERAS_LLM_DATA_DIR", os.path.join(workdir, "tfds"))
        patch.chdir(workdir)
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = cli.main(argv)
            except SystemExit as stop:
                code = stop.code
        lines = stderr.getvalue().strip().splitlines()
        assert code == 2, (argv, lines)
        assert len(lines) == 1 and re.match(r"keras-llm( [a-z]+)*: error: \S", lines[0]), (
            argv, lines)
        assert sorted(os.listdir(workdir)) == before, argv
