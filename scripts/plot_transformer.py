#!/usr/bin/env python3
"""Plots train_transformer's CSV: training and held-out loss, and held-out
accuracy (teacher-forced, per token and per whole sequence; greedy decoding's
whole-sequence accuracy at the last step) against the training step, for the
Transformer and the Momentum Transformer, side by side.

usage: plot_transformer.py out/transformer.csv docs/transformer.png
"""
import csv
import math
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def number(text):
    try:
        return float(text)
    except ValueError:
        return math.nan


def main(source, target):
    runs = {}
    with open(source, newline="") as f:
        for row in csv.DictReader(f):
            runs.setdefault(row["model"], []).append(row)
    if not runs:
        sys.exit(f"{source}: no evaluations to plot")
    labels = {"transformer": "Transformer", "momentum": "Momentum Transformer"}
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for index, (model, rows) in enumerate(runs.items()):
        color = f"C{index}"
        label = labels.get(model, model)
        steps = [int(r["step"]) for r in rows]
        train = [(s, number(r["train_loss"])) for s, r in zip(steps, rows) if not math.isnan(number(r["train_loss"]))]
        loss_ax.plot([s for s, _ in train], [v for _, v in train], color=color, alpha=0.5, label=f"{label}, training")
        loss_ax.plot(steps, [number(r["heldout_loss"]) for r in rows], color=color, label=f"{label}, held-out")
        acc_ax.plot(steps, [100 * number(r["token_accuracy"]) for r in rows], color=color, label=f"{label}, tokens")
        acc_ax.plot(steps, [100 * number(r["sequence_accuracy"]) for r in rows], color=color, linestyle=":",
                    label=f"{label}, whole sequences")
        greedy = number(rows[-1]["greedy_accuracy"])
        if not math.isnan(greedy):
            acc_ax.plot([steps[-1]], [100 * greedy], marker="*", markersize=10, color=color, linestyle="none",
                        label=f"{label}, whole sequences, greedy decoding")
    acc_ax.axhline(99, color="grey", linewidth=0.8, linestyle="--")
    loss_ax.set_xlabel("step")
    loss_ax.set_ylabel("cross-entropy per token")
    loss_ax.set_yscale("log")
    acc_ax.set_xlabel("step")
    acc_ax.set_ylabel("held-out accuracy, teacher-forced (%)")
    acc_ax.set_ylim(0, 101)
    for ax in (loss_ax, acc_ax):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="upper right" if ax is loss_ax else "center right")
    first = next(iter(runs.values()))[0]
    fig.suptitle(f"Sequence reversal, Transformer and Momentum Transformer (gamma {first['gamma']}, "
                 f"{first['backward']} backward)")
    fig.tight_layout()
    fig.savefig(target, dpi=120)
    print(f"wrote {target}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
