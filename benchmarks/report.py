#!/usr/bin/env python3
"""Summarises memory_vs_depth's Google Benchmark JSON.

Prints, per stack (tied or untied), the table
  depth | ResNet MiB | ResNet MB/layer | Momentum MiB | ratio | ResNet ms/step | Momentum ms/step | slowdown
comparing Residual with MomentumResidual in exact memory-free mode, then
every mode's efficiency against the GEMM rate measured in the same run.
Medians are used when the run has repetitions.

  report.py RESULTS.json [--plot docs/memory_vs_depth.png]
"""
import argparse
import json
import sys

MIB = 1024.0 * 1024.0


def load(path):
    with open(path) as f:
        data = json.load(f)
    runs = {}
    for b in data["benchmarks"]:
        if b.get("run_type") == "aggregate" and b.get("aggregate_name") != "median":
            continue
        name = b["run_name"]
        # A median replaces single repetitions of the same run.
        if name in runs and b.get("run_type") != "aggregate":
            continue
        runs[name] = b
    return data.get("context", {}), runs


def parse_name(name):
    # step/<mode>/<tied|untied>/<shape>/depth:<n>/real_time, gemm/<shape>/real_time
    parts = name.split("/")
    if parts[0] == "gemm":
        return ("gemm", None, parts[1], None)
    return ("step", parts[1], parts[3], (parts[2], int(parts[4].split(":")[1])))


def to_ms(b):
    scale = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}[b.get("time_unit", "ns")]
    return b["real_time"] * scale


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results")
    parser.add_argument("--plot", help="write a PNG of peak memory versus depth")
    args = parser.parse_args()
    context, runs = load(args.results)

    gemm = {}
    steps = {}
    for name, b in runs.items():
        kind, mode, shape, key = parse_name(name)
        if kind == "gemm":
            gemm[shape] = b["GFLOPs"]
        else:
            steps[(shape, key[0], mode, key[1])] = b
    if not steps:
        sys.exit("no step benchmarks in " + args.results)

    print("machine: %s CPUs at %s MHz; momnet threads %s; SIMD %s" % (
        context.get("num_cpus"), context.get("mhz_per_cpu"), context.get("momnet.threads", "?"),
        context.get("momnet.eigen_simd", "?")))
    shapes = sorted({k[0] for k in steps})
    for shape in shapes:
        for tied in ("tied", "untied"):
            depths = sorted({k[3] for k in steps if k[0] == shape and k[1] == tied})
            if not depths:
                continue
            print("\n%s, %s blocks (peak MiB of the library's allocator over one training step)" % (shape, tied))
            header = ("depth", "ResNet MiB", "ResNet MB/layer", "Momentum MiB", "ratio", "ResNet ms/step",
                      "Momentum ms/step", "slowdown")
            print("| " + " | ".join(header) + " |")
            print("|" + "|".join("---:" for _ in header) + "|")
            previous = None
            for depth in depths:
                r = steps.get((shape, tied, "residual", depth))
                m = steps.get((shape, tied, "exact", depth))
                if r is None or m is None:
                    continue
                # What each further layer stores: the slope of the ResNet's
                # peak between this depth and the previous one (MB = 1e6
                # bytes, PyTorch's unit).
                per_layer = "" if previous is None else "%.2f" % (
                    (r["peak_bytes"] - previous[1]) / (depth - previous[0]) / 1e6)
                previous = (depth, r["peak_bytes"])
                print("| %d | %.1f | %s | %.1f | %.1fx | %.1f | %.1f | %.2fx |" % (
                    depth, r["peak_bytes"] / MIB, per_layer, m["peak_bytes"] / MIB, r["peak_bytes"] / m["peak_bytes"],
                    to_ms(r), to_ms(m), to_ms(m) / to_ms(r)))
            print("\nall modes: ms/step, peak MiB (bit store MiB), GFLOP/s and share of the GEMM rate (%.1f GFLOP/s)"
                  % gemm.get(shape, float("nan")))
            for (s, t, mode, depth), b in sorted(steps.items(), key=lambda kv: (kv[0][2], kv[0][3])):
                if s != shape or t != tied:
                    continue
                rate = gemm.get(shape)
                share = " %.0f%%" % (100.0 * b["GFLOPs"] / rate) if rate else ""
                print("  %-8s depth %5d  %9.1f ms  %8.1f MiB (%6.2f)  RSS %8.1f MiB  %6.1f GFLOP/s%s" % (
                    mode, depth, to_ms(b), b["peak_bytes"] / MIB, b["bit_store_bytes"] / MIB,
                    b["peak_rss_bytes"] / MIB, b["GFLOPs"], share))

    if args.plot:
        plot(args.plot, steps, shapes[0], context)


def plot(path, steps, shape, context):
    """Peak memory and time per step versus depth, one line per mode."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    labels = {"residual": "ResNet (Residual)", "stored": "Momentum, stored activations",
              "exact": "Momentum, exact memory-free", "float": "Momentum, float inverse"}
    tied = "tied" if any(k[1] == "tied" for k in steps) else "untied"
    fig, (memory, time) = plt.subplots(1, 2, figsize=(10, 4))
    for mode in ("residual", "stored", "exact", "float"):
        runs = sorted((k[3], b) for k, b in steps.items() if k[0] == shape and k[1] == tied and k[2] == mode)
        if not runs:
            continue
        depths = [d for d, _ in runs]
        memory.plot(depths, [b["peak_bytes"] / MIB for _, b in runs], "-o", label=labels[mode])
        time.plot(depths, [to_ms(b) for _, b in runs], "-o", label=labels[mode])
    for ax in (memory, time):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("depth (residual blocks)")
        ax.grid(True, which="both", alpha=0.3)
    memory.set_ylabel("peak memory of a training step (MiB)")
    memory.set_title("activation memory (tape peak; parameters excluded)", fontsize=9)
    time.set_ylabel("time per training step (ms)")
    time.set_title("forward + backward + SGD step", fontsize=9)
    memory.legend(fontsize=8)
    fig.suptitle("momnet: MLP blocks %s (%s), float, %s thread(s), %s CPUs" % (
        shape.replace("_", " "), tied, context.get("momnet.threads", "?"), context.get("num_cpus", "?")))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print("\nwrote " + path)


if __name__ == "__main__":
    main()
