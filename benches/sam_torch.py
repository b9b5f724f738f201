#!/usr/bin/env python3
"""SGD and SAM steps in PyTorch, as SAM is commonly written: a per-parameter loop that takes
the gradient norm, adds the perturbation in place, runs the second forward and backward,
restores the weights and lets the base optimizer step. Prints the JSON fields `plateau bench
--json` prints, so one table holds both.

    python benches/sam_torch.py --model mlp --batch 128 --device cuda [--compile]

Models (the same definitions, parameter names and initialization as plateau's zoo, so
`load_state_dict` takes plateau's `--save` files): mlp = 784-256-256-10 and cnn on 1x28x28,
resnet18 = torchvision's ResNet-18 with the CIFAR stem on 3x32x32, all written out here.
Weights start He-normal (std sqrt(2 / fan_in)) with zero biases, as in plateau. BatchNorm's
running statistics are updated by the first pass of a SAM step only (the second pass at
w + e runs with momentum 0, the usual `disable_running_stats`), as plateau does.

`--compile` compiles the model (forward and backward) with torch.compile; the SAM loop and the
optimizer step stay eager, as they are commonly written. TF32 is off unless `--tf32` is
given (PyTorch's defaults: TF32 in cuDNN's convolutions, not in matmuls): plateau computes in
full f32, so the comparison is f32 against f32.
"""
import argparse, json, math, statistics, time

import torch
import torch.nn as nn
import torch.nn.functional as F

from peer_common import check_batch, cpu_name, round_fields


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet18(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        layers, cin = [], 64
        for i, (cout, stride) in enumerate([(64, 1), (128, 2), (256, 2), (512, 2)]):
            layer = nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1))
            setattr(self, f"layer{i + 1}", layer)
            cin = cout
        self.fc = nn.Linear(512, classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class MLP(nn.Sequential):
    """plateau's MLP names its layers 0, 2, 4: the flatten is not a layer."""

    def forward(self, x):
        return super().forward(x.flatten(1))


def he_init(net):
    """plateau's initialization: weights normal with std sqrt(2 / fan_in), biases zero."""
    for m in net.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / m.weight[0].numel()))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return net


def running_stats(net, on):
    """Turns BatchNorm's running-statistics update off (momentum 0) or back on."""
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if on:
                m.momentum = m.saved_momentum
            else:
                m.saved_momentum, m.momentum = m.momentum, 0.0


def make(model):
    if model == "mlp":
        return MLP(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)), (1, 28, 28)
    if model == "cnn":
        return nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10)), (1, 28, 28)
    if model == "resnet18":
        return ResNet18(), (3, 32, 32)
    raise SystemExit(f"unknown model {model}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="mlp")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--rho", type=float, default=0.05)
    ap.add_argument("--tf32", action="store_true", help="keep PyTorch's TF32 defaults (on in cuDNN's convolutions) instead of full f32")
    ap.add_argument("--init", help="start from these weights: a safetensors state_dict (plateau's `train --save`)")
    ap.add_argument("--batch-file", help="the batch: a safetensors file with `x` (f32) and `labels`")
    ap.add_argument("--save", help="write both variants' final state_dicts (`sgd.<name>`, `sam.<name>`) as safetensors")
    ap.add_argument("--f64", action="store_true", help="compute in float64 (for checking against plateau's reference; see benches/check_peers.py)")
    a = ap.parse_args()
    dtype = torch.float64 if a.f64 else torch.float32
    if not a.tf32:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    dev = torch.device(a.device)
    if dev.type == "cuda" and dev.index is not None:
        torch.cuda.set_device(dev)
    torch.manual_seed(0)
    net, shape = make(a.model)
    he_init(net)
    if a.init:
        from safetensors.torch import load_file
        try:
            net.load_state_dict(load_file(a.init))
        except RuntimeError as e:
            raise SystemExit(f"{a.init}: {e}")
    plain, nets = [], []
    for _ in range(2):
        m = make(a.model)[0].to(dev, dtype)
        m.load_state_dict(net.state_dict())
        plain.append(m)
        nets.append(torch.compile(m) if a.compile else m)
    opts = [torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4) for m in nets]
    if a.batch_file:
        from safetensors.torch import load_file
        t = load_file(a.batch_file)
        x, y = t["x"].to(dev, dtype), t["labels"].long().to(dev)
        check_batch(a.batch_file, x.shape, y.shape, shape)
        a.batch = x.shape[0]
    else:
        x = torch.rand(a.batch, *shape, device=dev, dtype=dtype)
        y = torch.randint(0, 10, (a.batch,), device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def sgd_step(m, opt):
        F.cross_entropy(m(x), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def sam_step(m, opt):
        F.cross_entropy(m(x), y).backward()
        params = [p for p in m.parameters() if p.grad is not None]
        with torch.no_grad():
            norm = torch.norm(torch.stack([p.grad.norm(2) for p in params]), 2)
            scale = a.rho / (norm + 1e-12)
            eps = []
            for p in params:
                e = p.grad * scale
                p.add_(e)
                eps.append(e)
        opt.zero_grad(set_to_none=True)
        running_stats(m, False)
        F.cross_entropy(m(x), y).backward()
        running_stats(m, True)
        with torch.no_grad():
            for p, e in zip(params, eps):
                p.sub_(e)
        opt.step()
        opt.zero_grad(set_to_none=True)

    def held(i):
        """Bytes of model i's weights and optimizer state (resident while the other steps)."""
        ts = list(nets[i].parameters()) + [v for st in opts[i].state.values() for v in st.values() if torch.is_tensor(v)]
        return sum(t.numel() * t.element_size() for t in ts)

    steps = [("sgd", lambda: sgd_step(nets[0], opts[0])), ("sam", lambda: sam_step(nets[1], opts[1]))]
    times = {n: [] for n, _ in steps}
    peak = {}
    for r in range(a.warmup + a.rounds):
        for n, f in steps:
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            sync()
            t = time.perf_counter()
            f()
            sync()
            if r >= a.warmup:
                times[n].append((time.perf_counter() - t) * 1e3)
            if dev.type == "cuda":
                # The step's own peak: everything allocated, less the other model's weights
                # and optimizer state (both models stay resident so the steps interleave).
                other = held(1 if n == "sgd" else 0)
                peak[n] = max(peak.get(n, 0), torch.cuda.max_memory_allocated() - other)
    if a.save:
        from safetensors.torch import save_file
        save_file({f"{n}.{k}": v.detach().cpu().contiguous() for n, m in zip(("sgd", "sam"), plain) for k, v in m.state_dict().items()}, a.save)
    sgd, sam = statistics.median(times["sgd"]), statistics.median(times["sam"])
    print(json.dumps({
        "framework": "torch.compile" if a.compile else "pytorch eager",
        "model": a.model, "batch": a.batch, "device": dev.type, "tf32": a.tf32,
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_name(),
        "rounds": a.rounds, "sgd_step_ms": sgd, "sam_step_ms": sam,
        "naive_sam_step_ms": None if a.compile else sam, "ratio": sam / (2 * sgd),
        "naive_ratio": None if a.compile else sam / (2 * sgd),
        "launches_sgd": None, "launches_sam": None,
        "peak_memory_bytes_sgd": peak.get("sgd"), "peak_memory_bytes_sam": peak.get("sam"),
        **round_fields(times),
    }))


if __name__ == "__main__":
    main()
