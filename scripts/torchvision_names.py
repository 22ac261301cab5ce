#!/usr/bin/env python3
"""Writes the parameter and buffer names (and shapes) of torchvision's
resnet18 and resnet50 (num_classes=10) to tests/data/, one per line:
`parameter NAME D0,D1,...` or `buffer NAME D0,...` (empty for a scalar).
tests/test_resnet.cpp checks momnet's ResNet builder against them. Needs
python3-torchvision (Debian); never needed by the build or the tests.

usage: /usr/bin/python3 scripts/torchvision_names.py
"""
import pathlib

import torchvision

root = pathlib.Path(__file__).resolve().parent.parent / "tests" / "data"
for name in ("resnet18", "resnet50"):
    model = getattr(torchvision.models, name)(num_classes=10)
    lines = [f"parameter {n} {','.join(map(str, p.shape))}" for n, p in model.named_parameters()]
    lines += [f"buffer {n} {','.join(map(str, b.shape))}" for n, b in model.named_buffers()]
    target = root / f"torchvision_{name}_names.txt"
    target.write_text("\n".join(lines) + "\n")
    print(f"wrote {target} ({len(lines)} entries, torchvision {torchvision.__version__})")
