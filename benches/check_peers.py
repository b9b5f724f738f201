#!/usr/bin/env python3
"""Checks that the peer scripts compute plateau's step, so BENCHMARKS.md compares like with like.

    python benches/check_peers.py --model mlp [--batch 128] [--steps 2] [--dtype f32|f64] [--frameworks torch,jax]

One seeded random batch is written as a dataset whose first two batches are that batch (MNIST's
IDX files for the MLP and the CNN, CIFAR-10's binary files for ResNet-18). plateau trains on it
for two SGD steps and two SAM steps (`plateau train --steps 2 --no-shuffle --no-augment --save`,
reference backend, lr 0.01, momentum 0.9, weight decay 5e-4, rho 0.05); the peer scripts take
plateau's initial weights (`--steps 0 --save`) and the batch (`--init`, `--batch-file`), run two
rounds and write their weights (`--save`). Every parameter's update after two steps (so momentum
counts) and every BatchNorm running statistic is compared with plateau's; the check fails (exit
1) when one differs by more than `--tolerance`, relative to the largest entry of plateau's.

plateau's reference backend accumulates in f64 (and rounds every op's result to f32); in
ResNet-18 at a small batch, f32 accumulation in the peers moves a few updates by percents, and
after one step the batch is nearly memorised and every rounding is amplified. So ResNet-18 is
checked by default over one step with the peers in float64 (`--steps 1 --dtype f64`), to
compare the algorithms rather than the roundings; the MLP and the CNN over two steps in f32.
"""
import argparse, os, shutil, struct, subprocess, sys, tempfile

import numpy as np
from safetensors.numpy import load_file, save_file

HERE = os.path.dirname(os.path.abspath(__file__))
SHAPES = {"mlp": (1, 28, 28), "cnn": (1, 28, 28), "resnet18": (3, 32, 32)}


def write_dataset(model, batch, d, seed):
    """Random pixels and labels; returns plateau's --data, the batch (x / 255, labels)."""
    rng = np.random.default_rng(seed)
    c, h, w = SHAPES[model]
    pixels = rng.integers(0, 256, (batch, c, h, w), dtype=np.uint8)
    labels = rng.integers(0, 10, batch, dtype=np.uint8)
    if model == "resnet18":
        rec = np.concatenate([labels[:, None], pixels.reshape(batch, -1)], axis=1)
        for i in range(1, 6):
            rec.tofile(os.path.join(d, f"data_batch_{i}.bin"))
        rec.tofile(os.path.join(d, "test_batch.bin"))
        data = f"cifar10:{d}"
    else:
        def idx(name, arr, magic):
            with open(os.path.join(d, name), "wb") as f:
                f.write(struct.pack(">I", magic) + b"".join(struct.pack(">I", n) for n in arr.shape))
                f.write(arr.tobytes())
        two = lambda a: np.concatenate([a, a])
        idx("train-images-idx3-ubyte", two(pixels[:, 0]), 0x803)
        idx("train-labels-idx1-ubyte", two(labels), 0x801)
        idx("t10k-images-idx3-ubyte", pixels[:, 0], 0x803)
        idx("t10k-labels-idx1-ubyte", labels, 0x801)
        data = f"mnist:{d}"
    return data, pixels.astype(np.float32) / 255.0, labels.astype(np.int64)


def run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stdout[-2000:]}{p.stderr[-2000:]}")


def worst(pairs):
    """The largest relative difference among (name, plateau's, the peer's) and its name."""
    best = (0.0, "")
    for name, ref, got in pairs:
        ref, got = np.asarray(ref, np.float64), np.asarray(got, np.float64)
        r = np.abs(ref - got).max() / (np.abs(ref).max() + 1e-30)
        best = max(best, (float(r), name))
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="mlp", choices=sorted(SHAPES))
    ap.add_argument("--batch", type=int, default=None, help="default: 128 (MLP, CNN), 8 (ResNet-18)")
    ap.add_argument("--frameworks", default="torch,jax")
    ap.add_argument("--plateau", default=os.path.join(HERE, "..", "target", "release", "plateau"))
    ap.add_argument("--dtype", choices=["f32", "f64"], help="the peers' precision (default: f64 for ResNet-18, else f32)")
    ap.add_argument("--tolerance", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, help="steps of each variant (default 2, so momentum counts; 1 for ResNet-18)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (data, weights) and print its path")
    a = ap.parse_args()
    batch = a.batch or (8 if a.model == "resnet18" else 128)
    steps = a.steps if a.steps is not None else (1 if a.model == "resnet18" else 2)
    f64 = (a.dtype or ("f64" if a.model == "resnet18" else "f32")) == "f64"
    if steps < 1 or batch < 1:
        sys.exit(f"--steps {steps} and --batch {batch}: both must be at least 1")
    if not os.path.exists(a.plateau):
        sys.exit(f"--plateau {a.plateau}: not found (build it with `cargo build --release`)")
    d = tempfile.mkdtemp(prefix="check-peers-")
    try:
        failed = check(a, batch, steps, f64, d)
    finally:
        if a.keep:
            print(f"kept {d}")
        else:
            shutil.rmtree(d, ignore_errors=True)
    sys.exit(1 if failed else 0)


def check(a, batch, steps, f64, d):
    """Runs plateau and the peers in `d`; prints the comparison; returns whether one failed."""
    data, x, y = write_dataset(a.model, batch, d, a.seed)
    save_file({"x": x, "labels": y}, os.path.join(d, "batch.safetensors"))
    common = [a.plateau, "train", "--model", a.model, "--data", data, "--batch-size", str(batch), "--lr", "0.01",
              "--momentum", "0.9", "--weight-decay", "5e-4", "--schedule", "constant",
              "--no-shuffle", "--no-augment", "--device", "reference"]
    run(common + ["--optimizer", "sgd", "--steps", "0", "--save", os.path.join(d, "init.safetensors")])
    ref = {}
    for opt in ("sgd", "sam"):
        path = os.path.join(d, f"plateau-{opt}.safetensors")
        rho = ["--rho", "0.05"] if opt == "sam" else []
        run(common + ["--optimizer", opt, "--steps", str(steps), "--save", path] + rho)
        ref[opt] = load_file(path)
    init = load_file(os.path.join(d, "init.safetensors"))

    failed = False
    print(f"{a.model}, batch {batch}, {steps} step(s) from plateau's initial weights{' (peers in float64)' if f64 else ''}:")
    for fw in a.frameworks.split(","):
        script = {"torch": "sam_torch.py", "jax": "sam_jax.py"}.get(fw)
        if script is None:
            sys.exit(f"--frameworks: unknown `{fw}` (torch, jax)")
        out = os.path.join(d, f"{fw}.safetensors")
        cmd = [sys.executable, os.path.join(HERE, script), "--model", a.model, "--init", os.path.join(d, "init.safetensors"),
               "--batch-file", os.path.join(d, "batch.safetensors"), "--warmup", "0", "--rounds", str(steps), "--save", out]
        if fw == "torch":
            cmd += ["--device", "cpu"]
        run(cmd + (["--f64"] if f64 else []))
        got = load_file(out)
        for opt in ("sgd", "sam"):
            weights, stats = [], []
            for name, v in ref[opt].items():
                if name.endswith("num_batches_tracked"):
                    continue
                peer = got.get(f"{opt}.{name}")
                if peer is None:
                    sys.exit(f"{fw}: no {opt}.{name} in its --save file")
                if name.endswith(("running_mean", "running_var")):
                    stats.append((name, v, peer))
                else:
                    weights.append((name, v - init[name], peer - init[name]))
            w, s = worst(weights), worst(stats)
            ok = w[0] <= a.tolerance and s[0] <= a.tolerance
            failed |= not ok
            line = f"  {fw:5} {opt}: updates within {w[0]:.2e} ({w[1]})"
            if stats:
                line += f", running statistics within {s[0]:.2e} ({s[1]})"
            print(line + ("" if ok else f"  FAIL (tolerance {a.tolerance:g})"))
    return failed


if __name__ == "__main__":
    main()
