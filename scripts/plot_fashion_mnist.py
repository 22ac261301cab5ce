#!/usr/bin/env python3
"""Plots train_fashion_mnist's CSV: train loss and test accuracy per epoch for
each model (resnet, momentum, finetuned), side by side; one colour per model
and, when the CSV holds several seeds, one line style per seed.

usage: plot_fashion_mnist.py out/fashion_mnist.csv docs/fashion_mnist.png
"""
import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(source, target):
    runs = {}
    with open(source, newline="") as f:
        for row in csv.DictReader(f):
            if row["model"] == "converted":
                continue
            runs.setdefault((row["model"], row.get("seed", "")), []).append(row)
    if not runs:
        sys.exit(f"{source}: no epochs to plot")
    labels = {"resnet": "ResNet", "momentum": "Momentum ResNet", "finetuned": "Momentum ResNet (fine-tuned)"}
    models = list(dict.fromkeys(model for model, _ in runs))
    seeds = list(dict.fromkeys(seed for _, seed in runs))
    styles = ["-", "--", ":", "-."]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for (model, seed), rows in runs.items():
        epochs = [int(r["epoch"]) for r in rows]
        label = labels.get(model, model) + (f" (seed {seed})" if len(seeds) > 1 else "")
        style = dict(color=f"C{models.index(model)}", linestyle=styles[seeds.index(seed) % len(styles)], marker="o",
                     markersize=3, label=label)
        loss_ax.plot(epochs, [float(r["train_loss"]) for r in rows], **style)
        acc_ax.plot(epochs, [100 * float(r["test_accuracy"]) for r in rows], **style)
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("train loss")
    loss_ax.set_yscale("log")
    acc_ax.set_xlabel("epoch")
    acc_ax.set_ylabel("test accuracy (%)")
    for ax in (loss_ax, acc_ax):
        ax.grid(True, alpha=0.3)
        ax.legend()
    first = next(iter(runs.values()))[0]
    fig.suptitle(f"Fashion-MNIST, {first['blocks']} BasicBlocks, width {first['width']}, gamma {first['gamma']}")
    fig.tight_layout()
    fig.savefig(target, dpi=120)
    print(f"wrote {target}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
