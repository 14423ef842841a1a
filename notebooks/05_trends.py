# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 05 · Trends: scale, efficiency, interpretability
#
# **Introduction.** Three questions shape where language models are going, and each can be
# asked of a small model on a laptop-class CPU with real measurements:
#
# 1. **Scale.** How does the loss fall as the model (parameters) and the compute spent
#    training it (FLOPs) grow? We train several sizes on the same data and plot validation
#    loss against both on log-log axes, where scaling laws are straight lines.
# 2. **Efficiency and energy.** What does training cost? `keras_llm.callbacks.Throughput`
#    logs tokens per second, FLOP/s and model FLOPs utilization (MFU); from the measured time
#    and a *stated* power figure we estimate the energy.
# 3. **Interpretability.** What did the model learn to look at? Attention maps of the trained
#    model on chosen sentences, and simple statistics of what each head attends to.

# %% [markdown]
# ## Setup

# %%
import csv
import dataclasses
import os
import shutil
import time
from pathlib import Path

import keras_llm  # first: selects the TensorFlow backend and quiets its start-up

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"  # also hide C++ notices (e.g. a oneDNN int64 fallback)

# %matplotlib inline
import keras
import matplotlib.pyplot as plt
import numpy as np
import tensorflow as tf
from matplotlib import ticker

from keras_llm import ModelConfig, TrainConfig, plots, training
from keras_llm import callbacks as llm_callbacks
from keras_llm import data as llm_data

plt.rcParams["figure.dpi"] = 80
print("keras", keras.__version__, "| keras_llm", keras_llm.__version__,
      "| CPUs visible:", os.cpu_count())

# %% [markdown]
# ## Settings
#
# The model sizes are one preset with its width (and feed-forward width) scaled, so
# everything else (depth, heads, vocabulary, context, data, steps) stays fixed. The quick
# setting (`KERAS_LLM_QUICK=1`, CI) starts from the `tiny` preset; the full one from the
# `small` preset cut down to run in a few minutes on 2 CPU cores.
#
# **The power figure is an assumption, not a measurement**: this notebook cannot read a
# power meter, so the energy estimate multiplies measured time by `ASSUMED_WATTS`, the power
# we assume the cores in use draw under load (a modern server core draws roughly 3–5 W at
# full load; we assume 10 W for the two cores this notebook is sized for, plus their share
# of the package). Change it to your machine's figure.

# %%
QUICK = os.environ.get("KERAS_LLM_QUICK") == "1"
if QUICK:
    BASE_MODEL = ModelConfig.preset("tiny")
    TRAIN_CONFIG = TrainConfig.preset("tiny")
    WIDTHS = (16, 32, 64)
else:
    BASE_MODEL = ModelConfig.preset(
        "small", vocabulary_size=2048, sequence_length=64, num_layers=2,
    )
    TRAIN_CONFIG = TrainConfig.preset("quick", pretrain_steps=250, precision="float32")
    WIDTHS = (64, 128, 256)
ratio = BASE_MODEL.intermediate_dim // BASE_MODEL.hidden_dim
SIZES = {f"width {w}": dataclasses.replace(BASE_MODEL, hidden_dim=w, intermediate_dim=ratio * w)
         for w in WIDTHS}
ASSUMED_WATTS = 10.0  # ASSUMPTION: power of the CPU cores used, in watts (not measured)
SENTENCES = ["the film is a gripping and funny ride",
             "it is not a good movie , but it is not a bad one either"]

ROOT = next((p for p in (Path.cwd(), *Path.cwd().parents) if (p / "keras_llm").is_dir()),
            Path.cwd())
RUN_DIR = Path(os.path.relpath(ROOT / "runs" / "notebooks" / "05_trends"))
shutil.rmtree(RUN_DIR, ignore_errors=True)
print("quick setting:", QUICK)
print(TRAIN_CONFIG)
for name, config in SIZES.items():
    print(f"{name}: hidden_dim={config.hidden_dim}, intermediate_dim={config.intermediate_dim}, "
          f"num_layers={config.num_layers}, num_heads={config.num_heads}")

# %% [markdown]
# ## Data
#
# All sizes pretrain on `keras_llm_corpus` with one shared tokenizer, so their losses are
# measured in the same units (nats per token of the same vocabulary) on the same held-out
# text.

# %%
corpus = llm_data.load_pretraining_text("keras_llm_corpus", "train")
tokenizer = llm_data.Tokenizer.train(corpus, BASE_MODEL.vocabulary_size)
print("vocabulary:", tokenizer.vocabulary_size, "| tokens per training step:",
      TRAIN_CONFIG.batch_size * BASE_MODEL.sequence_length)

# %% [markdown]
# ## The hardware's reference speed
#
# MFU (model FLOPs utilization) is the share of the hardware's peak FLOP/s that training
# turns into model FLOPs. A CPU's datasheet peak depends on clocks and vector units we
# cannot read reliably, so we **measure** a reference instead: the FLOP/s of a large float32
# matrix multiplication on this machine, the best case for the same math library training
# uses (the best of five timings). MFU below is relative to that measured rate, so it reads
# higher than an MFU against a datasheet peak would.

# %%
n, repeats = 2048, 5
a = tf.random.normal((n, n))
b = tf.random.normal((n, n))
_ = (a @ b).numpy()  # warm-up
rates = []
for _trial in range(5):  # the best of five timings: the least disturbed by anything else
    start = time.perf_counter()
    for _ in range(repeats):
        c = a @ b
    _ = c.numpy()
    rates.append(2 * n**3 * repeats / (time.perf_counter() - start))
PEAK_FLOPS = max(rates)
print(f"measured float32 matmul rate: {PEAK_FLOPS / 1e9:.1f} GFLOP/s "
      f"(five timings: {', '.join(f'{r / 1e9:.0f}' for r in rates)})")

# %% [markdown]
# ## Model and training: one run per size
#
# Each size is pretrained with `training.pretrain` for the same number of steps on the same
# batches, with `peak_flops` set so that the `Throughput` callback logs MFU. FLOPs per token
# come from `keras_llm.callbacks.training_flops_per_token` (6 × matmul parameters + the
# attention term, forward and backward).

# %%
runs = {}
for name, config in SIZES.items():
    keras.backend.clear_session()
    result = training.pretrain(config, TRAIN_CONFIG, run_dir=str(RUN_DIR / name.replace(" ", "_")),
                               tokenizer=tokenizer, peak_flops=PEAK_FLOPS, verbose=0)
    backbone = result.model.backbone
    embedding = backbone.token_embedding.count_params()
    runs[name] = {
        "result": result,
        "parameters": result.model.count_params(),
        "non_embedding_parameters": result.model.count_params() - embedding,
        "flops_per_token": llm_callbacks.training_flops_per_token(backbone.model_config),
    }
    with open(os.path.join(result.run_dir, "history.csv")) as f:
        runs[name]["history"] = list(csv.DictReader(f))
    print(f"{name}: {runs[name]['parameters']:,} parameters "
          f"({runs[name]['non_embedding_parameters']:,} outside the embedding), validation loss "
          f"{result.metrics['validation_loss']:.3f}, {result.seconds:.0f} s")

# %% [markdown]
# ## Evaluation
#
# ### 1. Scale: loss against parameters and compute
#
# Training FLOPs are those the `Throughput` callback counted over the run (steps × tokens
# per step × FLOPs per token). On log-log axes a power law `loss ∝ N^(-α)` is a straight
# line; the fitted slope is printed. With a fixed, short budget the larger models see the
# same tokens as the smaller ones, so this is an early-training snapshot, not a
# compute-optimal frontier.

# %%
names = list(runs)
params = np.array([runs[n]["non_embedding_parameters"] for n in names], float)
flops = np.array([float(runs[n]["history"][-1]["training_flops"]) for n in names])
losses = np.array([runs[n]["result"].metrics["validation_loss"] for n in names])
slope_params = np.polyfit(np.log(params), np.log(losses), 1)[0]
slope_flops = np.polyfit(np.log(flops), np.log(losses), 1)[0]

fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
for ax, x, label, slope in ((axes[0], params, "non-embedding parameters", slope_params),
                            (axes[1], flops, "training FLOPs", slope_flops)):
    ax.loglog(x, losses, "o-")
    ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%.2f"))
    ax.yaxis.set_minor_formatter(ticker.FormatStrFormatter("%.2f"))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    for xi, yi, name in zip(x, losses, names):
        ax.annotate(name, (xi, yi), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xlabel(label)
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title(f"fitted slope {slope:+.3f}")
    ax.grid(alpha=0.3, which="both")
fig.suptitle(f"Scale: {TRAIN_CONFIG.pretrain_steps} steps per size on keras_llm_corpus")
fig.tight_layout()
plt.show()

# %% [markdown]
# ### 2. Efficiency: tokens per second, FLOPs, MFU and energy
#
# Straight from each run's `history.csv` (the `Throughput` callback's epoch rows, first
# batch of the run excluded because it traces the graph). The energy estimate is the
# measured time multiplied by the assumed power: whole run (including tokenizer loading,
# graph tracing, validation and saving) and per million training tokens at the measured
# steady-state speed.

# %%
rows = []
for name in names:
    last = runs[name]["history"][-1]
    tokens_per_second = float(np.mean([float(r["tokens_per_second"])
                                       for r in runs[name]["history"]]))
    mfu = float(np.mean([float(r["mfu"]) for r in runs[name]["history"]]))
    seconds = runs[name]["result"].seconds
    rows.append({
        "name": name,
        "tokens_per_second": tokens_per_second,
        "flops_per_second": tokens_per_second * runs[name]["flops_per_token"],
        "mfu": mfu,
        "training_flops": float(last["training_flops"]),
        "seconds": seconds,
        "energy_wh": ASSUMED_WATTS * seconds / 3600,
        "joules_per_million_tokens": ASSUMED_WATTS / tokens_per_second * 1e6,
    })
header = (f"{'size':>10} {'tokens/s':>9} {'GFLOP/s':>8} {'MFU':>6} {'train FLOPs':>11} "
          f"{'run s':>6} {'Wh (est.)':>9} {'J/Mtok (est.)':>13}")
print(header)
for r in rows:
    print(f"{r['name']:>10} {r['tokens_per_second']:9.0f} {r['flops_per_second'] / 1e9:8.2f} "
          f"{r['mfu']:6.1%} {r['training_flops']:11.2e} {r['seconds']:6.0f} "
          f"{r['energy_wh']:9.3f} {r['joules_per_million_tokens']:13.0f}")
print(f"(energy columns: measured time x ASSUMED_WATTS = {ASSUMED_WATTS:g} W, an assumption)")

fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
axes[0].bar(names, [r["tokens_per_second"] for r in rows], color="C0")
axes[0].set_ylabel("training tokens / s")
axes[1].bar(names, [r["mfu"] for r in rows], color="C2")
axes[1].set_ylabel("MFU (vs measured matmul rate)")
for ax in axes:
    ax.grid(axis="y", alpha=0.3)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Inference: interpretability
#
# ### 3. Attention maps of the trained model
#
# `TransformerBackbone.attention_scores` returns every layer's attention weights; each
# heatmap row is a token attending over the tokens up to itself. Two summary numbers per
# head make the pictures comparable: the share of attention on the **previous token** (a
# "previous-token head" builds bigram-like features) and on the first token `[BOS]` (often
# used as a resting place when nothing else is relevant, an "attention sink").

# %%
largest = names[-1]
model = runs[largest]["result"].model
for sentence in SENTENCES:
    ids = tokenizer.encode([sentence], len(tokenizer.tokenize(sentence).numpy()) + 2).numpy()
    tokens = [tokenizer.id_to_token(int(i)) for i in ids[0]]
    scores = [np.asarray(s)[0] for s in model.backbone.attention_scores(ids)]
    last = len(scores) - 1
    plots.plot_attention(scores[last], tokens, title=f"{largest}, layer {last}: \"{sentence}\"")
    plt.show()

head_stats = []
for sentence in SENTENCES:
    ids = tokenizer.encode([sentence], len(tokenizer.tokenize(sentence).numpy()) + 2).numpy()
    for layer, s in enumerate(model.backbone.attention_scores(ids)):
        s = np.asarray(s)[0]  # (heads, T, T)
        for head in range(s.shape[0]):
            rows_ = np.arange(1, s.shape[1])
            head_stats.append((layer, head, s[head, rows_, rows_ - 1].mean(),
                               s[head, rows_, 0].mean()))
stats = {}
for layer, head, previous, first in head_stats:
    stats.setdefault((layer, head), []).append((previous, first))
print(f"{'layer':>5} {'head':>4} {'on previous token':>18} {'on [BOS]':>9}")
for (layer, head), values in stats.items():
    previous, first = np.mean(values, axis=0)
    print(f"{layer:5d} {head:4d} {previous:18.2f} {first:9.2f}")

# %% [markdown]
# ## Conclusion
#
# Scale: with the data and steps fixed, the validation loss is plotted against parameters
# and training FLOPs on log-log axes, and the fitted slopes say how fast it fell here (in
# the short runs of this notebook, an early-training snapshot). Efficiency: the same
# `Throughput` logs give tokens/s, FLOP/s and MFU for every size, and the energy follows from
# the measured time and the stated power assumption. Interpretability: the attention maps
# and per-head statistics show what each head of the trained model attends to. The sentences
# below are computed from this run.

# %%
print(f"- Scale: from {params[0]:,.0f} to {params[-1]:,.0f} non-embedding parameters the "
      f"validation loss went from {losses[0]:.3f} to {losses[-1]:.3f} "
      f"(log-log slope {slope_params:+.3f} against parameters, {slope_flops:+.3f} against "
      f"training FLOPs, {len(names)} sizes).")
fastest = max(rows, key=lambda r: r["tokens_per_second"])
best_mfu = max(rows, key=lambda r: r["mfu"])
print(f"- Efficiency: {fastest['name']} trains fastest ({fastest['tokens_per_second']:,.0f} "
      f"tokens/s); {best_mfu['name']} uses the hardware best (MFU {best_mfu['mfu']:.1%} of the "
      f"measured {PEAK_FLOPS / 1e9:.0f} GFLOP/s matmul rate).")
total_wh = sum(r["energy_wh"] for r in rows)
print(f"- Energy (estimate, assuming {ASSUMED_WATTS:g} W): {total_wh:.3f} Wh for all "
      f"{len(rows)} runs together, {min(r['joules_per_million_tokens'] for r in rows):,.0f}"
      f"-{max(r['joules_per_million_tokens'] for r in rows):,.0f} J per million training "
      "tokens.")
top_previous = max(stats, key=lambda k: np.mean(stats[k], axis=0)[0])
top_sink = max(stats, key=lambda k: np.mean(stats[k], axis=0)[1])
print(f"- Attention: layer {top_previous[0]} head {top_previous[1]} puts the most weight on "
      f"the previous token ({np.mean(stats[top_previous], axis=0)[0]:.2f}); layer "
      f"{top_sink[0]} head {top_sink[1]} the most on [BOS] "
      f"({np.mean(stats[top_sink], axis=0)[1]:.2f}).")
