#!/usr/bin/env python3
"""PyTorch's CPU time for benchmarks/conv_stage's ResNet step, to compare.

The same stage as `conv_stage --modes=residual`: `depth` torchvision-layout
BasicBlocks (3x3 convolutions without bias, batch norm in training mode, ReLU
after the addition), 32 channels at 28x28, batch 128, float; a training step
is forward, backward of mean(out^2) and an SGD step (learning rate 1e-4).
Median of `reps` steps after one untimed step, on one thread by default.
Needs Debian's python3-torch; never part of the build.

usage: /usr/bin/python3 scripts/torch_conv_stage.py [--depths=8,16,32] [--reps=3] [--threads=1]
"""
import statistics
import sys
import time

import torch
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + x)


def step_seconds(depth, reps, batch=128, channels=32, size=28):
    torch.manual_seed(7)
    stage = nn.Sequential(*[BasicBlock(channels) for _ in range(depth)])
    optimiser = torch.optim.SGD(stage.parameters(), lr=1e-4)
    x = torch.rand(batch, channels, size, size) * 2 - 1

    def step():
        optimiser.zero_grad()
        out = stage(x)
        (out * out).mean().backward()
        optimiser.step()

    step()  # untimed: allocator and caches warm
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv):
    depths, reps, threads = [8, 16, 32], 3, 1
    for arg in argv:
        key, _, value = arg.partition("=")
        if key == "--depths":
            depths = [int(d) for d in value.split(",") if d]
        elif key == "--reps":
            reps = int(value)
        elif key == "--threads":
            threads = int(value)
        else:
            sys.exit(__doc__)
    torch.set_num_threads(threads)
    print(f"PyTorch {torch.__version__}, {threads} thread(s), median of {reps} steps")
    print("| depth | PyTorch s/step |")
    print("|---:|---:|")
    for depth in depths:
        print(f"| {depth} | {step_seconds(depth, reps):.3f} |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
