"""Figures written into run directories: training curves, confusion matrices, attention maps.

Matplotlib runs headless (Agg) unless the user already picked a backend (e.g. a notebook).
"""

import math
import os

import matplotlib

if "MPLBACKEND" not in os.environ and not matplotlib.get_backend().lower().startswith(
    ("module://matplotlib_inline", "module://ipykernel")
):
    matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

CURVES = (
    ("loss", "loss"),
    ("learning_rate", "learning rate"),
    ("grad_norm", "gradient norm (before clipping)"),
)


def _finite(values):
    return [v for v in values if v is not None and math.isfinite(v)]


def plot_training_curves(steps, directory, prefix=""):
    """Writes `loss.png`, `learning_rate.png` and `grad_norm.png` over optimizer steps.

    Args:
        steps: dict of lists, with a `"step"` list and any of `loss`, `learning_rate`,
            `grad_norm` (what `StepLogger` records).
        directory: str. Where the PNGs go.
        prefix: str. Put before each file name, e.g. `"finetune_"`.

    Returns:
        The list of written paths.
    """
    written = []
    x = steps.get("step", [])
    for key, label in CURVES:
        values = steps.get(key)
        if not values or not _finite(values):
            continue
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(x[: len(values)], values, lw=1)
        if key == "grad_norm":
            ax.set_yscale("log")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = os.path.join(directory, f"{prefix}{key}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def plot_confusion_matrix(matrix, label_names, path, title="Confusion matrix"):
    """Writes a confusion-matrix heatmap (rows: true class, columns: predicted) to `path`."""
    matrix = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(1.2 * len(label_names) + 2.5, 1.1 * len(label_names) + 2))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(label_names)), label_names, rotation=30, ha="right")
    ax.set_yticks(range(len(label_names)), label_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    threshold = matrix.max() / 2 if matrix.size else 0
    for (i, j), value in np.ndenumerate(matrix):
        color = "white" if value > threshold else "black"
        ax.text(j, i, f"{int(value)}", ha="center", va="center", color=color)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_attention(scores, tokens, path=None, title="Attention", heads=None):
    """Heatmaps of one layer's attention weights `(heads, seq, seq)` with token labels.

    Returns the figure (and writes it to `path` when given).
    """
    scores = np.asarray(scores)
    heads = range(scores.shape[0]) if heads is None else heads
    heads = list(heads)
    fig, axes = plt.subplots(1, len(heads), figsize=(3.2 * len(heads) + 0.5, 3.6))
    axes = np.atleast_1d(axes)
    for ax, head in zip(axes, heads):
        ax.imshow(scores[head], cmap="viridis", vmin=0, vmax=1)
        ax.set_title(f"head {head}")
        ax.set_xticks(range(len(tokens)), tokens, rotation=90, fontsize=7)
        ax.set_yticks(range(len(tokens)), tokens, fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    if path:
        fig.savefig(path, dpi=110)
    return fig


def plot_learning_curve(results, path, title=None):
    """Test macro-F1 against labelled training examples (log x), one line per arm of a
    transfer study, with seed-to-seed std error bars.

    Args:
        results: dict from `keras_llm.transfer.transfer_study` (its `arms` entries carry
            `title` and, per budget, `f1_mean`, `f1_std`, `n`).
        path: str. Where the PNG goes.
        title: str. Figure title; defaults to one naming the data set and the seeds.

    Returns:
        `path`.
    """
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    markers = "os^Dvx"
    for index, arm in enumerate(results["arms"].values()):
        labels = sorted(arm["budgets"], key=int)
        x = [int(label) for label in labels]
        means = [arm["budgets"][label]["f1_mean"] for label in labels]
        stds = [arm["budgets"][label]["f1_std"] for label in labels]
        ax.errorbar(x, means, yerr=stds, marker=markers[index % len(markers)], capsize=3,
                    linestyle="--" if arm["title"].startswith("TF-IDF") else "-",
                    label=arm["title"])
    ax.set_xscale("log")
    budgets = [int(b) for b in results["budgets"]]
    ax.set_xticks(budgets, [f"{b:,}" for b in budgets])
    ax.minorticks_off()
    ax.set_xlabel("labelled training reviews (log scale)")
    ax.set_ylabel("test macro-F1")
    seeds = results.get("seeds", [])
    ax.set_title(title or f"What pretraining buys on {results.get('data', '')} "
                          f"(mean ± std over up to {len(seeds)} seed"
                          f"{'s' if len(seeds) != 1 else ''})")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
