"""The fine-tuning step of a published checkpoint: keras_llm vs keras-hub vs PyTorch.

What is measured: seconds per training step (forward, backward, AdamW update) of a 2-class
text classifier on all-MiniLM-L6-v2 (BERT: 6 layers, width 384, 12 heads, feed-forward 1536,
22.7M parameters), batch 32 x 64 tokens: the first 32 rotten_tomatoes training reviews,
encoded by the checkpoint's tokenizer to 64 tokens (`[CLS] text [SEP]`, padded; padding is
about half the tokens, and every contender computes it), labels their own. Contenders:

- keras_llm: `Classifier.from_preset("all-MiniLM-L6-v2", num_classes=2)` (mean pooling over
  real tokens, dropout 0.1, `Dense(2)`), compiled as `training.finetune` compiles it.
- keras-hub: `keras_hub.models.BertTextClassifier.from_preset(folder, num_classes=2,
  preprocessor=None)` on the same folder (its [CLS] pooler, dropout 0.1, `Dense(2)`), fed
  `token_ids`, `segment_ids` (zeros) and `padding_mask`.
- PyTorch (when `torch` is importable; `pip install torch==2.13.0`): the same BERT written
  here with `torch.nn` (`F.scaled_dot_product_attention`, exact GELU, post-layer-norm),
  loaded from the same `model.safetensors`, mean pooling + dropout 0.1 + `Linear(2)`; eager and
  `torch.compile`.

All use AdamW (learning rate 5e-5) and cross-entropy from logits, in the precision the
machine's automatic choice picks (`keras_llm.hardware.choose_precision("auto")`: bf16 where
it runs natively, float32 elsewhere; Keras: the `mixed_bfloat16` policy, PyTorch:
`torch.autocast("cpu", torch.bfloat16)`). Every contender is built and warmed up first, then
`--repeats` rounds run each for `--steps` steps in alternating order (A, B, C, then C, B, A,
...), timing each step (Keras: `on_train_batch_begin` to `on_train_batch_end` inside one `fit`
call; PyTorch: `time.perf_counter` around the step); the median step counts. Ratios > 1 mean
keras_llm is faster. Only meaningful on an otherwise idle machine: the load average is printed.

    python benchmarks/finetune_checkpoint.py                  # about 6 minutes on 2 cores
    python benchmarks/finetune_checkpoint.py --quick          # tiny batch, 2 steps: smoke
    python benchmarks/finetune_checkpoint.py --json out.json
"""

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # _common
sys.path.append(os.path.dirname(HERE))  # keras_llm from a checkout that is not pip-installed

import keras_llm  # noqa: E402, I001  (first: selects the TensorFlow backend, quiets TensorFlow)
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import _common  # noqa: E402
from keras_llm import data as llm_data  # noqa: E402
from keras_llm import hardware, presets  # noqa: E402

PRESET = "all-MiniLM-L6-v2"
LEARNING_RATE = 5e-5
TORCH_INSTALL = "pip install torch==2.13.0"


class KerasContender:
    def __init__(self, kind, precision, x, y):
        previous = keras.mixed_precision.global_policy()
        keras.mixed_precision.set_global_policy(precision)
        try:
            if kind == "keras_llm":
                model = keras_llm.models.Classifier.from_preset(PRESET, num_classes=2)
                inputs = x
            else:
                import keras_hub

                model = keras_hub.models.BertTextClassifier.from_preset(
                    presets.preset_directory(PRESET), num_classes=2, preprocessor=None
                )
                inputs = {"token_ids": x, "segment_ids": np.zeros_like(x),
                          "padding_mask": x != 0}
        finally:
            keras.mixed_precision.set_global_policy(previous)
        model.compile(
            optimizer=keras.optimizers.AdamW(LEARNING_RATE),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        self.model = model
        self.parameters = model.count_params()
        self.dataset = tf.data.Dataset.from_tensors((inputs, y)).repeat()

    def run(self, steps):
        timer = _common.step_timer()
        self.model.fit(self.dataset, steps_per_epoch=steps, epochs=1, verbose=0,
                       shuffle=False, callbacks=[timer])
        return timer.seconds


def build_torch_bert(config):
    """Hugging Face's BertModel (names included, so its state dict loads) + mean pooling head."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    h, heads, eps = config["hidden_size"], config["num_attention_heads"], config["layer_norm_eps"]

    class Dense(nn.Module):  # "dense" + "LayerNorm", as the checkpoint names them
        def __init__(self, inputs):
            super().__init__()
            self.dense = nn.Linear(inputs, h)
            self.LayerNorm = nn.LayerNorm(h, eps=eps)

    class SelfAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.query, self.key, self.value = (nn.Linear(h, h) for _ in range(3))

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.self = SelfAttention()
            self.output = Dense(h)

    class Intermediate(nn.Module):
        def __init__(self):
            super().__init__()
            self.dense = nn.Linear(h, config["intermediate_size"])

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.attention = Attention()
            self.intermediate = Intermediate()
            self.output = Dense(config["intermediate_size"])

        def forward(self, x, mask):
            b, t, _ = x.shape
            a = self.attention.self
            # (batch, heads, seq, head_dim)
            q, k, v = (p(x).view(b, t, heads, h // heads).transpose(1, 2)
                       for p in (a.query, a.key, a.value))
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.1
                                               if self.training else 0.0)
            y = self.attention.output.dense(y.transpose(1, 2).reshape(b, t, h))
            x = self.attention.output.LayerNorm(x + F.dropout(y, 0.1, self.training))
            y = self.output.dense(F.gelu(self.intermediate.dense(x)))
            return self.output.LayerNorm(x + F.dropout(y, 0.1, self.training))

    class Embeddings(nn.Module):
        def __init__(self):
            super().__init__()
            self.word_embeddings = nn.Embedding(config["vocab_size"], h)
            self.position_embeddings = nn.Embedding(config["max_position_embeddings"], h)
            self.token_type_embeddings = nn.Embedding(config["type_vocab_size"], h)
            self.LayerNorm = nn.LayerNorm(h, eps=eps)

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.ModuleList(Layer() for _ in range(config["num_hidden_layers"]))

    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.embeddings = Embeddings()
            self.encoder = Encoder()
            self.head = nn.Linear(h, 2)

        def forward(self, ids, labels):
            e = self.embeddings
            positions = torch.arange(ids.shape[1])
            x = (e.word_embeddings(ids) + e.position_embeddings(positions)
                 + e.token_type_embeddings.weight[0])
            x = F.dropout(e.LayerNorm(x), 0.1, self.training)
            real = ids != 0
            mask = real[:, None, None, :]  # (batch, 1, 1, seq): padding keys masked
            for layer in self.encoder.layer:
                x = layer(x, mask)
            weights = real.unsqueeze(-1).to(x.dtype)
            pooled = (x * weights).sum(1) / weights.sum(1).clamp(min=1.0)
            logits = self.head(F.dropout(pooled, 0.1, self.training))
            return F.cross_entropy(logits.float(), labels)

    return Classifier()


class TorchContender:
    def __init__(self, mode, bf16, x, y):
        import torch
        from safetensors.torch import load_file

        directory = presets.preset_directory(PRESET)
        with open(os.path.join(directory, presets.CONFIG_FILE)) as f:
            config = json.load(f)
        self.torch = torch
        self.model = build_torch_bert(config)
        state = {k: v for k, v in load_file(os.path.join(directory, presets.WEIGHTS_FILE)).items()
                 if not k.startswith("pooler.") and k != "embeddings.position_ids"}
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        assert missing == ["head.weight", "head.bias"] and not unexpected, (missing, unexpected)
        self.model.train()
        self.parameters = sum(p.numel() for p in self.model.parameters())
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=LEARNING_RATE)
        self.forward = torch.compile(self.model) if mode == "compile" else self.model
        self.bf16 = bf16
        self.ids = torch.from_numpy(x.astype(np.int64))
        self.labels = torch.from_numpy(y.astype(np.int64))

    def run(self, steps):
        torch = self.torch
        seconds = []
        for _ in range(steps):
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
                loss = self.forward(self.ids, self.labels)
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            seconds.append(time.perf_counter() - start)
        return seconds


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--sequence-length", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round")
    parser.add_argument("--repeats", type=int, default=4, help="alternating rounds")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--only", default="keras_llm,keras-hub,torch-eager,torch-compile")
    parser.add_argument("--precision", default="auto",
                        choices=["auto", "float32", "mixed_bfloat16"])
    parser.add_argument("--quick", action="store_true",
                        help="batch 4 x 16 tokens, 2 steps, 1 round: a smoke run")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.repeats, args.warmup = 2, 1, 1
        args.batch_size, args.sequence_length = 4, 16
    args.only = args.only.split(",")
    return args


def main(argv=None):
    args = parse_args(argv)
    tf.get_logger().setLevel("ERROR")
    load_start = os.getloadavg()[0]
    machine_line, machine_record = _common.machine()
    precision, reason = hardware.choose_precision(args.precision)
    print(f"# Fine-tuning step of {PRESET}: batch {args.batch_size} x {args.sequence_length} "
          "tokens")
    print(machine_line)
    print(f"precision: {precision} ({reason}); load average {load_start:.2f} at start")

    tokenizer = llm_data.Tokenizer.from_preset(PRESET)
    rows = list(llm_data.load_text_classification("rotten_tomatoes", "train")
                .take(args.batch_size).as_numpy_iterator())
    x = tokenizer.encode(tf.constant([t for t, _ in rows]), args.sequence_length).numpy()
    y = np.array([label for _, label in rows], "int32")
    print(f"batch: {x.shape}, {np.mean(x != 0):.0%} of the tokens real (the rest padding)")

    contenders = {}
    for name in args.only:
        start = time.perf_counter()
        try:
            if name in ("keras_llm", "keras-hub"):
                contender = KerasContender(name, precision, x, y)
            else:
                try:
                    import torch
                except ImportError:
                    print(f"{name} skipped: torch is not installed ({TORCH_INSTALL})")
                    continue
                torch.set_num_threads(len(os.sched_getaffinity(0)))
                contender = TorchContender(name.split("-")[1], precision == "mixed_bfloat16",
                                           x, y)
            contender.run(args.warmup)
        except Exception as error:  # e.g. torch.compile without a C++ compiler
            print(f"{name} failed, left out: {type(error).__name__}: {error}")
            continue
        contenders[name] = contender
        print(f"built and warmed up {name} ({contender.parameters:,} parameters) in "
              f"{time.perf_counter() - start:.1f} s", flush=True)
    for contender in contenders.values():
        contender.run(1)  # untimed: a Keras model's first step after others were traced
    times = _common.interleaved_rounds(list(contenders), args.repeats,
                                       lambda name: contenders[name].run(args.steps))
    load_end = os.getloadavg()[0]

    tokens = args.batch_size * args.sequence_length
    results = {}
    rows = []
    ours = _common.summarize(times["keras_llm"])["median"] if "keras_llm" in times else None
    for name, seconds in times.items():
        stats = _common.summarize(seconds)
        median = stats["median"]
        results[name] = dict(stats, tokens_per_second=tokens / median,
                             parameters=contenders[name].parameters)
        ratio = f"{median / ours:.2f}x" if ours else "-"
        rows.append([name, f"{median * 1000:.0f}", f"{stats['iqr'] * 1000:.0f}",
                     f"{tokens / median:,.0f}", ratio])
    print(f"\n{args.repeats} rounds x {args.steps} steps each; load average {load_end:.2f} at "
          "the end")
    print(_common.markdown_table(
        ["contender", "ms/step (median)", "IQR ms", "tokens/s", "keras_llm speed-up"], rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine_record, "precision": precision, "results": results,
                       "load": [load_start, load_end], "args": vars(args)}, f, indent=2)
    return results


if __name__ == "__main__":
    main()
