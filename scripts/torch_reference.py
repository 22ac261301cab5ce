#!/usr/bin/env python3
"""PyTorch reference fixtures for momnet (tests/test_torch_fixtures.cpp reads
them), and the reverse check: a momnet-written file loaded into PyTorch.

Needs Debian's python3-torch (1.13) and python3-torchvision (0.14); never
needed by the build or the tests. Use Debian's interpreter:

    /usr/bin/python3 scripts/torch_reference.py make [OUTDIR]
        Writes OUTDIR/torch_<model>.safetensors (OUTDIR: tests/data).
    /usr/bin/python3 scripts/torch_reference.py check PATH MODEL
        Loads PATH (written by momnet, e.g. by the C++ test run with
        MOMNET_WRITE_TORCH_CHECK=DIR) into the PyTorch model MODEL with a
        strict load_state_dict, recomputes every expected value the file
        holds and compares; exit status 1 when one is off by more than 1e-5
        from PyTorch's float32 value and from its float64 one (see check()).

MODEL is one of:
    mlp_momentum       a Momentum ResNet of 6 MLP blocks (momnet's MLPBlock:
                       fc1 -> tanh -> fc2, width 8, hidden 16), written in
                       plain PyTorch: v = 0; for each block f:
                       v = gamma v + (1 - gamma) f(x); x = x + v.
    resnet_basic       torchvision's ResNet with BasicBlocks and the CIFAR
                       stem (3x3 conv stride 1, no max pool), three stages of
                       widths 4, 8, 16 with 2 blocks each, 10 classes.
    resnet_bottleneck  the same with Bottlenecks: widths 2, 4, 8 (out 8, 16,
                       32 channels), 1, 2, 2 blocks, a stem of 4 channels.
    transformer_encoder
                       nn.TransformerEncoder of 2 pre-norm (norm_first)
                       layers, d_model 16, 4 heads, feed-forward 32, gelu,
                       dropout 0, a final LayerNorm; batch 2, 6 positions
                       (lengths 6 and 4), a float src_mask and a key
                       padding mask. Two modes: `plain` (PyTorch's
                       forward) and `momentum`, its Momentum version as
                       momnet's to_momentum makes it (the layers return
                       their whole output, so f(x) = layer(x) - x):
                       v = gamma v + (1 - gamma)(layer(x) - x); x = x + v;
                       then the final norm.
    transformer        nn.Transformer, 2 post-norm encoder and 2 decoder
                       layers, d_model 16, 2 heads, feed-forward 32, relu,
                       dropout 0; batch 2, src of 5 positions (lengths 5
                       and 3), tgt of 4 (lengths 4 and 3); a causal
                       tgt_mask and the three key padding masks (the
                       memory's is the src's). Mode `plain`.

A file holds, in float32 (int64 for num_batches_tracked and labels):
    <state_dict name>        every parameter and buffer (strict load);
                             batch-norm weights, biases and running
                             statistics are random, not 1, 0, 0, 1
    input                    the network's input (the transformer's: src, tgt)
    mask.<name>              the transformers' masks, under the names of
                             their forward() arguments, as momnet takes
                             them: additive float (0 or -inf; src_mask
                             random); PyTorch 1.13 cannot mix a float
                             attn_mask with a float key padding mask, so
                             the key padding masks go to it as bool
                             (mask == -inf), which it turns back into -inf
    loss_weight              mlp_momentum, transformers: R of the loss
                             sum(output * R); the transformers' R has the
                             signs of their plain output (see make())
    labels                   resnets: classes of the loss cross_entropy(output,
                             labels) (mean over the batch)
    [P.]output, [P.]loss     the network's output and the loss
    [P.]grad.input           d loss / d input (grad.src, grad.tgt)
    [P.]grad.<param name>    d loss / d parameter, for every parameter
    train.after.<buffer>     training mode: every buffer after the step
where P is `train` (batch statistics; the running ones updated once) or
`eval` (running statistics) for the resnets, `plain` or `momentum` for the
transformers (in eval mode, dropout 0) and absent for the MLP. The
metadata records the model, gamma, the loss, the versions and the
transformers' options and sequence lengths.

gamma: momnet uses gamma as p / 2^16 (0.9 -> 58982 / 65536 =
0.899993896484375, exactly a float), so the PyTorch side uses that value too.
"""
import copy
import json
import pathlib
import struct
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

GAMMA_BITS = 16
GAMMA = round(0.9 * 2**GAMMA_BITS) / 2**GAMMA_BITS
TOLERANCE = 1e-5
DATA_NAMES = ("input", "src", "tgt", "labels", "loss_weight", "output", "loss")
DATA_PREFIXES = ("grad.", "train.", "eval.", "plain.", "momentum.", "mask.")
DTYPES = {"F32": torch.float32, "F64": torch.float64, "I64": torch.int64}


def is_data(name):
    """Fixture values, as opposed to the model's state_dict entries."""
    return name in DATA_NAMES or name.startswith(DATA_PREFIXES)


# --- safetensors, by hand (the Python package is not in Debian) -----------

def write_safetensors(path, tensors, metadata):
    assert sys.byteorder == "little", "safetensors is little-endian; this writer copies native bytes"
    names = {torch.float32: "F32", torch.float64: "F64", torch.int64: "I64"}
    header, blobs, offset = {"__metadata__": metadata}, [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        data = t.numpy().tobytes()
        header[name] = {"dtype": names[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def read_safetensors(path):
    raw = pathlib.Path(path).read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    metadata = header.pop("__metadata__", None) or {}
    data = raw[8 + length :]
    tensors = {}
    for name, entry in header.items():
        begin, end = entry["data_offsets"]
        dtype = DTYPES[entry["dtype"]]
        chunk = bytearray(data[begin:end])
        flat = torch.frombuffer(chunk, dtype=dtype) if chunk else torch.empty(0, dtype=dtype)
        tensors[name] = flat.reshape(entry["shape"]).clone()
    return tensors, metadata


# --- the models ------------------------------------------------------------

class MLPBlock(nn.Module):
    """momnet's MLPBlock (include/momnet/layers/mlp_block.hpp): fc1, tanh, fc2."""

    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


class MomentumMLP(nn.ModuleList):
    """A Momentum ResNet of MLP blocks, named 0.fc1.weight, ... as momnet's MomentumResidual."""

    def __init__(self, depth=6, dim=8, hidden=16, gamma=GAMMA):
        super().__init__([MLPBlock(dim, hidden) for _ in range(depth)])
        self.gamma = gamma

    def forward(self, x):
        v = torch.zeros_like(x)
        for f in self:
            v = self.gamma * v + (1 - self.gamma) * f(x)
            x = x + v
        return x


class CifarResNet(ResNet):
    """torchvision's ResNet with the CIFAR stem and any number of stages, as
    momnet's resnet() with ResNetStem::cifar: conv1 (3x3, stride 1, no bias),
    bn1, relu, layer1..layerK (stride 2 from the second), avgpool, fc."""

    def __init__(self, block, layers, widths, stem_width, in_channels=3, num_classes=10):
        # ResNet.__init__ builds the four ImageNet stages; only its
        # _make_layer (blocks, downsample rule, names) is reused.
        nn.Module.__init__(self)
        self._norm_layer = nn.BatchNorm2d
        self.inplanes, self.dilation, self.groups, self.base_width = stem_width, 1, 1, 64
        self.conv1 = nn.Conv2d(in_channels, stem_width, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.relu = nn.ReLU(inplace=True)
        self.stages = len(widths)
        for i, (planes, blocks) in enumerate(zip(widths, layers)):
            setattr(self, f"layer{i + 1}", self._make_layer(block, planes, blocks, stride=1 if i == 0 else 2))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(self.inplanes, num_classes)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        for i in range(self.stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


D_MODEL, FEEDFORWARD = 16, 32
# Positions per sequence of a batch padded to the longest; the padding's keys are masked.
ENCODER_LENGTHS = (6, 4)
SRC_LENGTHS, TGT_LENGTHS = (5, 3), (4, 3)


class TransformerEncoder(nn.TransformerEncoder):
    """nn.TransformerEncoder (2 pre-norm gelu layers and a final norm); with
    `gamma` set, its Momentum version as momnet's to_momentum makes it, the
    same parameters and names."""

    def __init__(self):
        layer = nn.TransformerEncoderLayer(D_MODEL, 4, FEEDFORWARD, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        super().__init__(layer, 2, norm=nn.LayerNorm(D_MODEL), enable_nested_tensor=False)
        self.gamma = None

    def forward(self, src, mask=None, src_key_padding_mask=None):
        if self.gamma is None:
            return super().forward(src, mask=mask, src_key_padding_mask=src_key_padding_mask)
        x, v = src, torch.zeros_like(src)
        for layer in self.layers:
            f = layer(x, src_mask=mask, src_key_padding_mask=src_key_padding_mask) - x
            v = self.gamma * v + (1 - self.gamma) * f
            x = x + v
        return self.norm(x)


def transformer():
    return nn.Transformer(D_MODEL, 2, num_encoder_layers=2, num_decoder_layers=2, dim_feedforward=FEEDFORWARD,
                          dropout=0.0, activation="relu", batch_first=True, norm_first=False)


# name: (constructor, shapes of the inputs and loss_weight, loss, modes)
MODELS = {
    "mlp_momentum": (lambda: MomentumMLP(), {"input": (4, 8), "loss_weight": (4, 8)}, "sum(output * loss_weight)",
                     [None]),
    "resnet_basic": (
        lambda: CifarResNet(BasicBlock, [2, 2, 2], [4, 8, 16], stem_width=4),
        {"input": (4, 3, 8, 8)},
        "cross_entropy(output, labels), mean",
        ["train", "eval"],
    ),
    "resnet_bottleneck": (
        lambda: CifarResNet(Bottleneck, [1, 2, 2], [2, 4, 8], stem_width=4),
        {"input": (4, 3, 8, 8)},
        "cross_entropy(output, labels), mean",
        ["train", "eval"],
    ),
    "transformer_encoder": (
        TransformerEncoder,
        {"input": (2, max(ENCODER_LENGTHS), D_MODEL), "loss_weight": (2, max(ENCODER_LENGTHS), D_MODEL)},
        "sum(output * loss_weight)",
        ["plain", "momentum"],
    ),
    "transformer": (
        transformer,
        {"src": (2, max(SRC_LENGTHS), D_MODEL), "tgt": (2, max(TGT_LENGTHS), D_MODEL),
         "loss_weight": (2, max(TGT_LENGTHS), D_MODEL)},
        "sum(output * loss_weight)",
        ["plain"],
    ),
}
TRANSFORMER_METADATA = {
    "transformer_encoder": {"d_model": D_MODEL, "nhead": 4, "num_layers": 2, "dim_feedforward": FEEDFORWARD,
                            "activation": "gelu", "norm_first": True, "final_norm": True, "dropout": 0.0,
                            "src_lengths": list(ENCODER_LENGTHS), "gamma": GAMMA},
    "transformer": {"d_model": D_MODEL, "nhead": 2, "num_encoder_layers": 2, "num_decoder_layers": 2,
                    "dim_feedforward": FEEDFORWARD, "activation": "relu", "norm_first": False, "dropout": 0.0,
                    "src_lengths": list(SRC_LENGTHS), "tgt_lengths": list(TGT_LENGTHS)},
}


def randomise_batch_norms(model, generator):
    """Batch-norm state away from its 1, 0, 0, 1 start, so that loading it matters."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            with torch.no_grad():
                m.weight.copy_(torch.rand(c, generator=generator) + 0.5)
                m.bias.copy_(0.2 * torch.randn(c, generator=generator))
                m.running_mean.copy_(0.2 * torch.randn(c, generator=generator))
                m.running_var.copy_(torch.rand(c, generator=generator) * 1.5 + 0.5)
                m.num_batches_tracked.fill_(3)


def randomise_transformer(model, generator):
    """Every parameter redrawn: matrices xavier-uniform (as nn.Transformer's
    _reset_parameters, but also the encoder's, whose layers start as copies),
    norm weights around 1, biases around 0 (PyTorch starts them at 1 and 0)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                bound = (6.0 / (p.shape[0] + p.shape[1])) ** 0.5
                p.copy_((2 * torch.rand(p.shape, generator=generator) - 1) * bound)
            elif ".norm" in name or name.startswith("norm"):
                p.copy_(torch.rand(p.shape, generator=generator) + 0.5 if name.endswith("weight")
                        else 0.2 * torch.randn(p.shape, generator=generator))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=generator))


def padding_mask(lengths):
    """[batch, max(lengths)], additive: -inf at the positions past each length."""
    positions = torch.arange(max(lengths))
    return torch.stack([torch.where(positions < n, 0.0, float("-inf")) for n in lengths])


def transformer_masks(name, generator):
    if name == "transformer_encoder":
        n = max(ENCODER_LENGTHS)
        return {"mask.src_mask": 0.5 * torch.randn((n, n), generator=generator),
                "mask.src_key_padding_mask": padding_mask(ENCODER_LENGTHS)}
    return {"mask.tgt_mask": nn.Transformer.generate_square_subsequent_mask(max(TGT_LENGTHS)),
            "mask.src_key_padding_mask": padding_mask(SRC_LENGTHS),
            "mask.tgt_key_padding_mask": padding_mask(TGT_LENGTHS),
            "mask.memory_key_padding_mask": padding_mask(SRC_LENGTHS)}


def forward(model, inputs, data):
    """The model's output for `inputs`, with the masks of `data` (the key
    padding masks as bool: see the top of this file)."""
    masks = {k[len("mask."):]: v for k, v in data.items() if k.startswith("mask.")}
    for k in masks:
        if k.endswith("key_padding_mask"):
            masks[k] = masks[k] == float("-inf")
    if isinstance(model, nn.Transformer):
        return model(inputs["src"], inputs["tgt"], **masks)
    if isinstance(model, TransformerEncoder):
        return model(inputs["input"], mask=masks.get("src_mask"),
                     src_key_padding_mask=masks.get("src_key_padding_mask"))
    return model(inputs["input"])


def run(model, data, mode, gamma=GAMMA):
    """One step of the fixture protocol: forward on the inputs in `mode`, the
    loss, backward. Returns the expected values under their file names."""
    model = copy.deepcopy(model)
    if mode in ("train", "eval"):
        model.train(mode == "train")
    elif mode is not None:  # the transformers: dropout 0, eval mode either way
        model.eval()
        model.gamma = gamma if mode == "momentum" else None
    prefix = "" if mode is None else mode + "."
    inputs = {k: data[k].clone().requires_grad_(True) for k in ("input", "src", "tgt") if k in data}
    output = forward(model, inputs, data)
    if "labels" in data:
        loss = F.cross_entropy(output, data["labels"])
    else:
        loss = (output * data["loss_weight"]).sum()
    loss.backward()
    values = {prefix + "output": output.detach(), prefix + "loss": loss.detach()}
    for name, x in inputs.items():
        values[prefix + "grad." + name] = x.grad
    for name, p in model.named_parameters():
        values[prefix + "grad." + name] = p.grad
    if mode == "train":
        for name, b in model.named_buffers():
            values["train.after." + name] = b.detach().clone()
    return values


def make(outdir):
    torch.set_num_threads(1)
    outdir = pathlib.Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    for seed, (name, (build, shapes, loss, modes)) in enumerate(MODELS.items()):
        torch.manual_seed(100 + seed)
        generator = torch.Generator().manual_seed(200 + seed)
        model = build()
        randomise_batch_norms(model, generator)
        if name in TRANSFORMER_METADATA:
            randomise_transformer(model, generator)
        data = {k: torch.randn(shape, generator=generator) for k, shape in shapes.items() if k != "loss_weight"}
        if name in TRANSFORMER_METADATA:
            data.update(transformer_masks(name, generator))
        if "labels" in loss:
            data["labels"] = torch.randint(0, 10, (shapes["input"][0],), generator=generator)
        else:
            data["loss_weight"] = torch.randn(shapes["loss_weight"], generator=generator)
        if name in TRANSFORMER_METADATA:
            # R takes the signs of the plain output: the loss is a sum of
            # positive terms, not a small difference of large ones whose
            # float32 rounding would be many times the 1e-5 asked of it.
            # (With gradients on, as in run(): without, PyTorch takes its
            # nested-tensor fast path, another computation.)
            output = forward(copy.deepcopy(model).eval(), data, data).detach()
            assert (output != 0).all()
            data["loss_weight"] = data["loss_weight"].abs() * torch.sign(output)
        tensors = {k: v.detach().clone() for k, v in model.state_dict().items()}
        assert not any(is_data(k) for k in tensors), "a state_dict name collides with a fixture name"
        tensors.update(data)
        for mode in modes:  # each from the same starting state (run copies the model)
            tensors.update(run(model, data, mode))
        metadata = {
            "format": "pt",
            "model": name,
            "loss": loss,
            "generator": "scripts/torch_reference.py make",
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
        }
        if name == "mlp_momentum":
            metadata["gamma"] = repr(GAMMA)
        for key, value in TRANSFORMER_METADATA.get(name, {}).items():
            metadata[key] = value if isinstance(value, str) else json.dumps(value)
        path = outdir / f"torch_{name}.safetensors"
        write_safetensors(path, tensors, metadata)
        print(f"wrote {path}: {len(tensors)} tensors, {path.stat().st_size} bytes")


def relative_error(a, b):
    """max |a - b| / max |b|"""
    scale = b.abs().max().item()
    difference = (a.double() - b.double()).abs().max().item()
    return difference / scale if scale > 0 else difference


def check(path, name):
    """Loads a momnet-written file into PyTorch and compares its values.

    Each tensor passes when momnet's value is within TOLERANCE of PyTorch's
    float32 one or, failing that, of PyTorch's float64 result (the same
    float32 weights and inputs, computed in double: the exact answer both
    float32 computations approximate). Some gradients carry a float32 error
    of several 1e-6 in any implementation (a batch norm's bias in training
    mode: a sum of terms that nearly cancel, each already rounded through
    the layers after it), so two correct float32 implementations can differ
    by more than 1e-5 there; the second test tells that apart from an error
    of momnet's."""
    torch.set_num_threads(1)
    tensors, metadata = read_safetensors(path)
    build, _, _, modes = MODELS[name]
    state = {k: v for k, v in tensors.items() if not is_data(k)}
    models = {}
    gamma = float(metadata["gamma"]) if metadata.get("gamma") else GAMMA
    for dtype in (torch.float32, torch.float64):
        model = build().to(dtype)
        if name == "mlp_momentum":
            model.gamma = gamma
        model.load_state_dict(state, strict=True)  # raises on any missing or unexpected key
        models[dtype] = model
    print(f"{path}: strict load_state_dict of {len(state)} entries into {name} OK (metadata: {metadata})")
    data = {k: v for k, v in tensors.items()
            if k in ("input", "src", "tgt", "labels", "loss_weight") or k.startswith("mask.")}
    data64 = {k: v.double() if v.is_floating_point() else v for k, v in data.items()}
    worst, worst64, failed, conditioned, compared = 0.0, 0.0, [], [], 0
    for mode in modes:
        prefix = "" if mode is None else mode + "."
        if prefix + "output" not in tensors:
            continue
        reference64 = run(models[torch.float64], data64, mode, gamma)
        for key, value in run(models[torch.float32], data, mode, gamma).items():
            if key not in tensors:
                failed.append(f"{key}: missing from the file")
                continue
            expected = tensors[key]
            if value.shape != expected.shape:
                failed.append(f"{key}: shape {list(value.shape)} in PyTorch, {list(expected.shape)} in the file")
                continue
            compared += 1
            if not value.is_floating_point():
                if not torch.equal(value, expected):
                    failed.append(f"{key}: {value.tolist()} in PyTorch, {expected.tolist()} in the file")
                continue
            error = relative_error(expected, value)
            error64 = relative_error(expected, reference64[key])
            torch_error64 = relative_error(value, reference64[key])
            worst, worst64 = max(worst, error), max(worst64, error64)
            line = (f"{key}: momnet vs torch float32 {error:.3g}; vs torch float64: momnet {error64:.3g}, "
                    f"torch float32 {torch_error64:.3g}")
            if error > TOLERANCE:
                (conditioned if error64 <= TOLERANCE else failed).append(line)
    if compared == 0:
        failed.append("no expected values in the file")
    for line in conditioned:
        print("within 1e-5 of torch float64 only:", line)
    for line in failed:
        print("MISMATCH", line)
    print(f"compared {compared} tensors; worst relative error (max |momnet - torch| / max |torch|): "
          f"{worst:.3g} against torch float32, {worst64:.3g} against torch float64; "
          + ("FAILED" if failed else "OK"))
    return not failed


def main(argv):
    if len(argv) >= 1 and argv[0] == "make" and len(argv) <= 2:
        make(argv[1] if len(argv) == 2 else pathlib.Path(__file__).resolve().parent.parent / "tests" / "data")
        return 0
    if len(argv) == 3 and argv[0] == "check" and argv[2] in MODELS:
        return 0 if check(argv[1], argv[2]) else 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
