"""The `keras-llm` command line: help, one-line errors with exit code 2, the quickstart."""

import json
import os
import subprocess
import sys

import pytest

from keras_llm import cli

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
