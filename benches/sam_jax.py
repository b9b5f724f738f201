#!/usr/bin/env python3
"""SGD and SAM steps in JAX under `jax.jit`, each step one jitted function (SAM: gradient,
norm, perturbation, second gradient, SGD update with momentum and weight decay). Prints the
JSON fields `plateau bench --json` prints.

    python benches/sam_jax.py --model mlp --batch 128

Models (the same definitions as plateau's zoo and benches/sam_torch.py): mlp = 784-256-256-10
and cnn on 1x28x28, resnet18 with the CIFAR stem on 3x32x32 (BatchNorm in training mode; the
running statistics are updated from the first pass only, as plateau does). Weights start
He-normal with zero biases, as in plateau. Each step donates its parameters, momentum and
statistics to the next (updated in place, as plateau does). Matmuls and convolutions run at
full f32 precision unless `--tf32` is given (JAX's default on recent GPUs is TF32).
"""
import argparse, json, statistics, time
from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from peer_common import check_batch, cpu_name, round_fields


def he(key, shape, fan_in):
    return jax.random.normal(key, shape, jnp.float32) * jnp.sqrt(2.0 / fan_in)


# Parameters live in flat dicts under PyTorch's (and plateau's) names and layouts: module name
# -> {"weight", "bias"}; a linear layer's weight is [out, in]; BatchNorm's running statistics
# are in a second dict, module name -> {"running_mean", "running_var"}.
def linear(key, i, o):
    return {"weight": he(key, (o, i), i), "bias": jnp.zeros((o,), jnp.float32)}


def dense(p, h):
    return h @ p["weight"].T + p["bias"]


def conv(key, cin, cout, k, bias=True):
    p = {"weight": he(key, (cout, cin, k, k), cin * k * k)}
    if bias:
        p["bias"] = jnp.zeros((cout,), jnp.float32)
    return p


def conv2d(p, x, stride=1, pad=1):
    y = lax.conv_general_dilated(x, p["weight"], (stride, stride), [(pad, pad), (pad, pad)], dimension_numbers=("NCHW", "OIHW", "NCHW"))
    return y + p["bias"][None, :, None, None] if "bias" in p else y


def maxpool(x):
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")


def bn_init(c):
    return {"weight": jnp.ones((c,)), "bias": jnp.zeros((c,))}, {"running_mean": jnp.zeros((c,)), "running_var": jnp.ones((c,))}


def bn(p, s, x):
    mean = x.mean(axis=(0, 2, 3))
    var = x.var(axis=(0, 2, 3))
    n = x.shape[0] * x.shape[2] * x.shape[3]
    y = (x - mean[None, :, None, None]) / jnp.sqrt(var[None, :, None, None] + 1e-5)
    new = {"running_mean": 0.9 * s["running_mean"] + 0.1 * mean, "running_var": 0.9 * s["running_var"] + 0.1 * var * n / (n - 1)}
    return y * p["weight"][None, :, None, None] + p["bias"][None, :, None, None], new


def make(model, key):
    ks = iter(jax.random.split(key, 64))
    if model == "mlp":
        params = {"0": linear(next(ks), 784, 256), "2": linear(next(ks), 256, 256), "4": linear(next(ks), 256, 10)}

        def apply(p, s, x):
            h = x.reshape(x.shape[0], -1)
            h = jax.nn.relu(dense(p["0"], h))
            h = jax.nn.relu(dense(p["2"], h))
            return dense(p["4"], h), s
        return params, {}, apply, (1, 28, 28)
    if model == "cnn":
        params = {"0": conv(next(ks), 1, 32, 3), "3": conv(next(ks), 32, 64, 3), "7": linear(next(ks), 64 * 7 * 7, 128), "9": linear(next(ks), 128, 10)}

        def apply(p, s, x):
            h = maxpool(jax.nn.relu(conv2d(p["0"], x)))
            h = maxpool(jax.nn.relu(conv2d(p["3"], h)))
            h = jax.nn.relu(dense(p["7"], h.reshape(h.shape[0], -1)))
            return dense(p["9"], h), s
        return params, {}, apply, (1, 28, 28)
    if model == "resnet18":
        params, state = {"conv1": conv(next(ks), 3, 64, 3, False)}, {}
        params["bn1"], state["bn1"] = bn_init(64)
        blocks, cin = [], 64
        for li, (cout, stride) in enumerate([(64, 1), (128, 2), (256, 2), (512, 2)]):
            for bi in range(2):
                name, st = f"layer{li + 1}.{bi}", stride if bi == 0 else 1
                params[name + ".conv1"] = conv(next(ks), cin, cout, 3, False)
                params[name + ".bn1"], state[name + ".bn1"] = bn_init(cout)
                params[name + ".conv2"] = conv(next(ks), cout, cout, 3, False)
                params[name + ".bn2"], state[name + ".bn2"] = bn_init(cout)
                down = st != 1 or cin != cout
                if down:
                    params[name + ".downsample.0"] = conv(next(ks), cin, cout, 1, False)
                    params[name + ".downsample.1"], state[name + ".downsample.1"] = bn_init(cout)
                blocks.append((name, st, down))
                cin = cout
        params["fc"] = linear(next(ks), 512, 10)

        def apply(p, s, x):
            new = {}

            def b(name, h):
                y, new[name] = bn(p[name], s[name], h)
                return y
            h = jax.nn.relu(b("bn1", conv2d(p["conv1"], x)))
            for name, st, down in blocks:
                o = jax.nn.relu(b(name + ".bn1", conv2d(p[name + ".conv1"], h, st)))
                o = b(name + ".bn2", conv2d(p[name + ".conv2"], o))
                sc = b(name + ".downsample.1", conv2d(p[name + ".downsample.0"], h, st, 0)) if down else h
                h = jax.nn.relu(o + sc)
            h = h.mean(axis=(2, 3))
            return dense(p["fc"], h), new
        return params, state, apply, (3, 32, 32)
    raise SystemExit(f"unknown model {model}")


def flat(tree, prefix=""):
    """{module: {leaf: array}} -> {prefix + "module.leaf": array}."""
    return {f"{prefix}{m}.{k}": v for m, d in tree.items() for k, v in d.items()}


def load(tree, tensors, what):
    """Replaces every leaf of `tree` by the tensor of the same name (a plateau `--save` file)."""
    want = flat(tree)
    missing = sorted(set(want) - set(tensors))
    if missing:
        raise SystemExit(f"{what}: missing {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    for name, v in want.items():
        if tuple(tensors[name].shape) != tuple(v.shape):
            raise SystemExit(f"{what}: {name} has shape {list(tensors[name].shape)}, the model wants {list(v.shape)}")
    return {m: {k: jnp.asarray(tensors[f"{m}.{k}"], v.dtype) for k, v in d.items()} for m, d in tree.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="mlp")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--rho", type=float, default=0.05)
    ap.add_argument("--tf32", action="store_true", help="JAX's default matmul precision (TF32 on recent GPUs)")
    ap.add_argument("--init", help="start from these weights: a safetensors state_dict (plateau's `train --save`)")
    ap.add_argument("--batch-file", help="the batch: a safetensors file with `x` (f32) and `labels`")
    ap.add_argument("--save", help="write both variants' final weights and statistics (`sgd.<name>`, `sam.<name>`) as safetensors")
    ap.add_argument("--f64", action="store_true", help="compute in float64 (for checking against plateau's reference; see benches/check_peers.py)")
    a = ap.parse_args()
    if not a.tf32:
        jax.config.update("jax_default_matmul_precision", "highest")
    if a.f64:
        jax.config.update("jax_enable_x64", True)
    params, state, apply, shape = make(a.model, jax.random.PRNGKey(0))
    if a.init:
        from safetensors.numpy import load_file
        t = load_file(a.init)
        params, state = load(params, t, a.init), load(state, t, a.init)
    if a.batch_file:
        from safetensors.numpy import load_file
        t = load_file(a.batch_file)
        x, y = jnp.asarray(t["x"], jnp.float32), jnp.asarray(t["labels"], jnp.int32)
        check_batch(a.batch_file, x.shape, y.shape, shape)
        a.batch = x.shape[0]
    else:
        k1, k2 = jax.random.split(jax.random.PRNGKey(1))
        x = jax.random.uniform(k1, (a.batch, *shape))
        y = jax.random.randint(k2, (a.batch,), 0, 10)
    lr, mom, wd = 0.01, 0.9, 5e-4
    tm = jax.tree_util.tree_map
    if a.f64:
        params, state, x = tm(lambda v: v.astype(jnp.float64), (params, state, x))

    def loss(p, s):
        logits, new = apply(p, s, x)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1)), new

    def update(p, buf, g):
        g = tm(lambda g, w: g + wd * w, g, p)
        buf = tm(lambda b, g: mom * b + g, buf, g)
        return tm(lambda w, b: w - lr * b, p, buf), buf

    @partial(jax.jit, donate_argnums=(0, 1, 2))
    def sgd(p, s, buf):
        (l, new), g = jax.value_and_grad(loss, has_aux=True)(p, s)
        p, buf = update(p, buf, g)
        return p, new, buf, l

    @partial(jax.jit, donate_argnums=(0, 1, 2))
    def sam(p, s, buf):
        (l, new), g = jax.value_and_grad(loss, has_aux=True)(p, s)
        norm = jnp.sqrt(sum(jnp.sum(v * v) for v in jax.tree_util.tree_leaves(g)))
        adv = tm(lambda w, g: w + a.rho * g / (norm + 1e-12), p, g)
        g2, _ = jax.grad(loss, has_aux=True)(adv, s)
        p, buf = update(p, buf, g2)
        return p, new, buf, l

    # Each variant its own copies (a donated buffer is gone after the call).
    runs = {n: [tm(jnp.copy, params), tm(jnp.copy, state), tm(jnp.zeros_like, params)] for n in ("sgd", "sam")}
    fns = {"sgd": sgd, "sam": sam}
    times = {"sgd": [], "sam": []}
    for r in range(a.warmup + a.rounds):
        for n in ("sgd", "sam"):
            t = time.perf_counter()
            out = fns[n](*runs[n])
            jax.block_until_ready(out)
            if r >= a.warmup:
                times[n].append((time.perf_counter() - t) * 1e3)
            runs[n] = list(out[:3])
    if a.save:
        import numpy as np
        from safetensors.numpy import save_file
        out = {}
        for n in ("sgd", "sam"):
            out.update({k: np.asarray(v) for k, v in flat(runs[n][0], n + ".").items()})
            out.update({k: np.asarray(v) for k, v in flat(runs[n][1], n + ".").items()})
        save_file(out, a.save)
    dev = jax.devices()[0]
    peak = (dev.memory_stats() or {}).get("peak_bytes_in_use") if dev.platform == "gpu" else None
    s, m = statistics.median(times["sgd"]), statistics.median(times["sam"])
    print(json.dumps({
        "framework": "jax.jit", "model": a.model, "batch": a.batch, "device": dev.platform, "tf32": a.tf32,
        "device_name": dev.device_kind if dev.platform != "cpu" else cpu_name(),
        "rounds": a.rounds, "sgd_step_ms": s, "sam_step_ms": m, "naive_sam_step_ms": None,
        "ratio": m / (2 * s), "naive_ratio": None, "launches_sgd": None, "launches_sam": None,
        "peak_memory_bytes_sgd": None, "peak_memory_bytes_sam": None, "peak_bytes_in_use_process": peak,
        **round_fields(times),
    }))


if __name__ == "__main__":
    main()
