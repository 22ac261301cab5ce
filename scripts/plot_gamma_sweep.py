#!/usr/bin/env python3
"""Plots train_fashion_mnist --gammas's CSV: final test accuracy (each seed and
their mean) and the tape's peak memory against gamma, and prints the table.

usage: plot_gamma_sweep.py out/gamma_sweep.csv docs/paper_gamma.png
"""
import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(source, target):
    last = {}  # (gamma, seed) -> the run's last epoch
    peak = {}  # (gamma, seed) -> its largest peak over the epochs
    with open(source, newline="") as f:
        for row in csv.DictReader(f):
            key = (float(row["gamma"]), int(row["seed"]))
            if key not in last or int(row["epoch"]) >= int(last[key]["epoch"]):
                last[key] = row
            peak[key] = max(peak.get(key, 0.0), float(row["peak_tape_mib"]))
    if not last:
        sys.exit(f"{source}: no runs to plot")
    gammas = sorted({g for g, _ in last})
    seeds = sorted({s for _, s in last})
    positions = range(len(gammas))  # gamma 0.9 and 0.99 would overlap on a linear axis
    fig, (acc_ax, mem_ax) = plt.subplots(1, 2, figsize=(10, 4))
    means = []
    print("| gamma | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | peak tape MiB |")
    print("|---:|" + "---:|" * (len(seeds) + 2))
    for i, g in enumerate(gammas):
        accs = [100 * float(last[(g, s)]["test_accuracy"]) for s in seeds if (g, s) in last]
        means.append(sum(accs) / len(accs))
        acc_ax.scatter([i] * len(accs), accs, color="tab:blue", alpha=0.5)
        mib = max(peak[(g, s)] for s in seeds if (g, s) in peak)
        cells = " | ".join(f"{100 * float(last[(g, s)]['test_accuracy']):.2f}%" if (g, s) in last else "-" for s in seeds)
        print(f"| {g:g} | {cells} | {means[-1]:.2f}% | {mib:.1f} |")
    acc_ax.plot(list(positions), means, marker="o", color="tab:blue", label="mean over seeds")
    mem_ax.plot(list(positions), [max(peak[(g, s)] for s in seeds if (g, s) in peak) for g in gammas], marker="o",
                color="tab:orange")
    for ax in (acc_ax, mem_ax):
        ax.set_xticks(list(positions))
        ax.set_xticklabels([f"{g:g}" for g in gammas])
        ax.set_xlabel("gamma")
        ax.grid(True, alpha=0.3)
    acc_ax.set_ylabel("final test accuracy (%)")
    acc_ax.legend()
    mem_ax.set_ylabel("peak tape memory per step (MiB)")
    first = next(iter(last.values()))
    fig.suptitle(f"Fashion-MNIST, Momentum ResNet with {first['blocks']} BasicBlocks, width {first['width']}, "
                 f"{first['epoch']} epochs, seeds {', '.join(map(str, seeds))}")
    fig.tight_layout()
    fig.savefig(target, dpi=120)
    print(f"wrote {target}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
