#!/usr/bin/env python3
"""Plots the CSVs of the paper programs (examples/paper/) as the figures of
docs/paper.md:

  docs/paper_cubic.png       paper_cubic: trajectories x_n against depth, training curves
  docs/paper_rings.png       paper_rings: decision regions and point clouds by layer
  docs/paper_lto.png         paper_learning_to_optimize: test loss versus depth
  docs/paper_exactness.png   paper_exactness: gradient error versus depth

usage: plot_paper.py [--out out] [--docs docs] [--only cubic,rings,lto,exactness]

Reads the programs' default CSV paths under --out; a figure whose CSV is
missing is skipped with a message. out/paper_cubic_adam.csv, when present
(paper_cubic --optimizer adam ... --csv out/paper_cubic_adam.csv), adds a
panel with the best ResNet trained that way.
"""
import argparse
import csv
import math
import os
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RESNET = "tab:blue"
MOMENTUM = "tab:red"
LABELS = {"resnet": "ResNet", "momentum": "Momentum ResNet"}


def read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def trajectories(rows, model, seed):
    """{input: [x_0, ..., x_N]} for one model and seed."""
    out = defaultdict(dict)
    for r in rows:
        if r["model"] == model and r["seed"] == seed:
            out[float(r["input"])][int(r["layer"])] = float(r["x"])
    return {x0: [layers[n] for n in sorted(layers)] for x0, layers in sorted(out.items())}


def final_mse(traj):
    return sum((xs[-1] + x0 ** 3) ** 2 for x0, xs in traj.items()) / len(traj)


def plot_trajectories(ax, traj, color_map, title):
    colors = plt.get_cmap(color_map)
    inputs = sorted(traj)
    for i, x0 in enumerate(inputs):
        xs = traj[x0]
        ax.plot(xs, range(len(xs)), "-x", lw=2, color=colors(0.35 + 0.6 * i / max(1, len(inputs) - 1)))
        ax.plot([-x0 ** 3], [len(xs) - 1], "o", ms=9, mfc="none", color="k", alpha=0.5)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("x_n")
    ax.set_ylabel("layer n")
    ax.grid(True, alpha=0.3)


def cubic(out, docs):
    path = os.path.join(out, "paper_cubic.csv")
    rows = read(path)
    seed = "0"
    res = trajectories(rows, "resnet", seed)
    mom = trajectories(rows, "momentum", seed)
    adam_path = os.path.join(out, "paper_cubic_adam.csv")
    adam = None
    if os.path.exists(adam_path):
        adam_rows = read(adam_path)
        seeds = sorted({r["seed"] for r in adam_rows})
        best = min(seeds, key=lambda s: final_mse(trajectories(adam_rows, "resnet", s)))
        adam = (best, trajectories(adam_rows, "resnet", best))
    panels = 4 if adam else 3
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 4.4))
    plot_trajectories(axes[0], res, "Blues", f"ResNet, SGD as the reference (seed {seed})")
    plot_trajectories(axes[1], mom, "Reds", f"Momentum ResNet, gamma 0.99, SGD (seed {seed})")
    if adam:
        plot_trajectories(axes[3], adam[1], "Greens", f"ResNet trained with Adam (seed {adam[0]}):\n"
                          "large steps, x_n changes sign every layer")
    loss_path = os.path.join(out, "paper_cubic_loss.csv")
    ax = axes[2]
    if os.path.exists(loss_path):
        curves = defaultdict(list)
        for r in read(loss_path):
            curves[(r["model"], r["seed"])].append(float(r["loss"]))
        for (model, s), values in sorted(curves.items()):
            # A running mean over 20 steps: the batches are fresh samples.
            smooth = [sum(values[max(0, i - 19):i + 1]) / len(values[max(0, i - 19):i + 1])
                      for i in range(len(values))]
            ax.plot(smooth, color=RESNET if model == "resnet" else MOMENTUM, alpha=0.7, lw=1,
                    label=LABELS[model] if s == "0" else None)
        ax.axhline(1 / 7, color="k", ls="--", lw=1, label="1/7: best increasing map")
        ax.set_yscale("log")
        ax.set_ylim(1e-2, 1)  # a diverged run leaves the plot upwards
        ax.set_xlabel("SGD step")
        ax.set_ylabel("training MSE (running mean of 20)")
        ax.set_title("training, all seeds", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    else:
        ax.axis("off")
    fig.suptitle("Learning x -> -x^3 with one weight-tied MLP block, depth 15 (circles: targets -x_0^3)")
    fig.tight_layout()
    target = os.path.join(docs, "paper_cubic.png")
    fig.savefig(target, dpi=110)
    print(f"wrote {target}")


def rings(out, docs):
    rows = read(os.path.join(out, "paper_rings.csv"))
    grid = read(os.path.join(out, "paper_rings_grid.csv"))
    results = {(r["seed"], r["model"]): r for r in read(os.path.join(out, "paper_rings_results.csv"))}
    depth = max(int(r["layer"]) for r in rows)
    layers = sorted({0, depth // 3, 2 * depth // 3, depth})
    seeds = sorted({r["seed"] for r in rows}, key=int)
    # Rows of the figure: the ResNet's best and worst seeds, and the Momentum
    # ResNet's worst.
    def acc(seed, model):
        return float(results[(seed, model)]["test_acc"])
    res_seeds = sorted(seeds, key=lambda s: (-acc(s, "resnet"), int(s)))
    panels = [("resnet", res_seeds[0])]
    if len(res_seeds) > 1:
        panels.append(("resnet", res_seeds[-1]))
    panels.append(("momentum", min(seeds, key=lambda s: (acc(s, "momentum"), int(s)))))
    fig, axes = plt.subplots(len(panels), 1 + len(layers), figsize=(3.3 * (1 + len(layers)), 3.4 * len(panels)),
                             squeeze=False)
    for k, (model, seed) in enumerate(panels):
        ax = axes[k, 0]
        cells = {(float(r["x"]), float(r["y"])): int(r["pred"]) for r in grid
                 if r["model"] == model and r["seed"] == seed}
        xs = sorted({x for x, _ in cells})
        ys = sorted({y for _, y in cells})
        image = [[cells[(x, y)] for x in xs] for y in ys]
        ax.imshow(image, origin="lower", extent=(xs[0], xs[-1], ys[0], ys[-1]), cmap="coolwarm", alpha=0.35,
                  vmin=0, vmax=1, interpolation="nearest")
        pts = [r for r in rows if r["model"] == model and r["seed"] == seed and int(r["layer"]) == 0]
        ax.scatter([float(r["x"]) for r in pts], [float(r["y"]) for r in pts], c=[int(r["label"]) for r in pts],
                   cmap="coolwarm", s=2)
        res = results[(seed, model)]
        ax.set_title(f"{LABELS[model]}, seed {seed}: test acc {100 * float(res['test_acc']):.1f}%\n"
                     f"decision on the input plane; folds {100 * float(res['folded_fraction']):.0f}% of it",
                     fontsize=8)
        for j, layer in enumerate(layers):
            ax = axes[k, j + 1]
            pts = [r for r in rows if r["model"] == model and r["seed"] == seed and int(r["layer"]) == layer]
            ax.scatter([float(r["x"]) for r in pts], [float(r["y"]) for r in pts],
                       c=[int(r["label"]) for r in pts], cmap="coolwarm", s=2)
            if layer == depth:
                # The classifier: class 1 where x_N[1] > x_N[0].
                lo = min(min(float(r["x"]) for r in pts), min(float(r["y"]) for r in pts))
                hi = max(max(float(r["x"]) for r in pts), max(float(r["y"]) for r in pts))
                ax.plot([lo, hi], [lo, hi], "k--", lw=1)
            ax.set_title(f"x_{layer}" + ("; dashed: the decision line" if layer == depth else ""), fontsize=9)
    fig.suptitle("Two nested rings, no added dimension: one weight-tied MLP block, depth 15, logits = x_N "
                 "(blue: inner ring, red: outer ring)")
    fig.tight_layout()
    target = os.path.join(docs, "paper_rings.png")
    fig.savefig(target, dpi=90)
    print(f"wrote {target}")


def lto(out, docs):
    rows = read(os.path.join(out, "paper_lto.csv"))
    by_model = defaultdict(lambda: defaultdict(list))
    for r in rows:
        by_model[r["model"]][int(r["depth"])].append(float(r["test_loss"]))
    fig, ax = plt.subplots(figsize=(6.5, 4.6))
    styles = {
        "gd_tuned_step": ("gradient descent, best fixed step", RESNET, "--", None),
        "heavy_ball_tuned_step": ("heavy ball (same gamma), best fixed step", MOMENTUM, "--", None),
        "resnet": ("ResNet, learned step (tied)", RESNET, "-", "o"),
        "momentum": ("Momentum ResNet, learned step (tied)", MOMENTUM, "-", "s"),
    }
    for model, (label, color, ls, marker) in styles.items():
        if model not in by_model:
            continue
        depths = sorted(by_model[model])
        geo = [math.exp(sum(math.log(v) for v in by_model[model][d]) / len(by_model[model][d])) for d in depths]
        ax.plot(depths, geo, ls=ls, marker=marker, color=color, label=label, alpha=0.9 if marker else 0.6)
        if marker:
            for d in depths:
                ax.plot([d] * len(by_model[model][d]), by_model[model][d], marker, color=color, alpha=0.3, ms=4)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("depth (iterations of the learned optimiser)")
    ax.set_ylabel("test relative suboptimality")
    ax.set_title("Learning to optimize ill-conditioned least squares", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    target = os.path.join(docs, "paper_lto.png")
    fig.savefig(target, dpi=110)
    print(f"wrote {target}")


def exactness(out, docs):
    rows = read(os.path.join(out, "paper_exactness.csv"))
    gammas = sorted({r["gamma"] for r in rows}, key=float)
    colors = dict(zip(gammas, ["tab:green", "tab:orange", "tab:purple", "tab:brown", "tab:gray"]))
    floor, ceiling = 1e-12, 1e3
    fig, ax = plt.subplots(figsize=(7, 4.8))
    for gamma in gammas:
        for mode, ls, marker in [("float_inverse", "-", "o"), ("exact", ":", "s")]:
            pts = [r for r in rows if r["gamma"] == gamma and r["mode"] == mode]
            depths = [int(r["depth"]) for r in pts]
            values = []
            for r in pts:
                v = float(r["relative_error"]) if r["relative_error"] not in ("", "nan") else float("nan")
                if math.isnan(v) or r["status"] != "ok":
                    values.append(ceiling)  # not finite, or refused
                else:
                    values.append(min(max(v, floor), ceiling))
            label = f"{mode}, gamma {gamma}"
            ax.plot(depths, values, ls=ls, marker=marker, color=colors[gamma], label=label, ms=5)
    ax.axhline(floor, color="k", lw=0.5)
    ax.axhline(ceiling, color="k", lw=0.5)
    ax.text(10, floor * 2, "0: bitwise equal to stored backprop", fontsize=8)
    ax.text(10, ceiling / 4, "not finite", fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(floor / 3, ceiling * 3)
    ax.set_xlabel("depth")
    ax.set_ylabel("relative gradient error vs stored backprop")
    ax.set_title("Memory-free gradients, float: exact mode against the floating-point inverse", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="lower right", bbox_to_anchor=(1, 0.07))
    fig.tight_layout()
    target = os.path.join(docs, "paper_exactness.png")
    fig.savefig(target, dpi=110)
    print(f"wrote {target}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="out", help="directory of the programs' CSVs")
    parser.add_argument("--docs", default="docs", help="where to write the PNGs")
    parser.add_argument("--only", default="cubic,rings,lto,exactness", help="comma-separated figures")
    args = parser.parse_args()
    figures = {"cubic": cubic, "rings": rings, "lto": lto, "exactness": exactness}
    failed = False
    for name in args.only.split(","):
        if name not in figures:
            sys.exit(f"plot_paper.py: unknown figure '{name}' (cubic, rings, lto, exactness)")
        try:
            figures[name](args.out, args.docs)
        except FileNotFoundError as error:
            print(f"skipped {name}: {error.filename} is missing", file=sys.stderr)
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
