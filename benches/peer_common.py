"""What benches/sam_torch.py and benches/sam_jax.py share (neither framework's code)."""


def cpu_name():
    """The CPU's model, as `plateau bench` names it for the reference backend."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or "cpu"


def check_batch(path, x_shape, labels_shape, input_shape):
    """Exits naming the file when a --batch-file's `x` and `labels` do not fit the model."""
    x_shape, labels_shape = tuple(x_shape), tuple(labels_shape)
    if x_shape[1:] != tuple(input_shape) or labels_shape != x_shape[:1]:
        raise SystemExit(f"{path}: x {list(x_shape)} and labels {list(labels_shape)}, the model wants "
                         f"x [B, {', '.join(map(str, input_shape))}] and labels [B]")


def median_interval(v, level=0.95):
    """The median's distribution-free interval, as `plateau bench` computes it: the order
    statistics x(k) and x(n+1-k) for the largest k whose coverage 1 - 2 P(Binomial(n, 1/2) <=
    k - 1) is at least `level` ([min, max] when too few values reach it). (low, high, coverage)."""
    import math
    s, n = sorted(v), len(v)
    if n == 0:
        return None
    k, coverage, cdf = 1, 1 - 2 * 0.5 ** n, 0.5 ** n
    for j in range(1, n):
        if 2 * (j + 1) > n + 1:
            break
        cdf += math.comb(n, j) / 2 ** n
        if 1 - 2 * cdf < level:
            break
        k, coverage = j + 1, 1 - 2 * cdf
    return s[k - 1], s[n - k], coverage


def round_fields(times):
    """The JSON fields `plateau bench` adds round by round: each round's step times, and each
    SAM step against its round's SGD step (median and its 95% interval)."""
    import statistics
    r = [m / (2 * s) for s, m in zip(times["sgd"], times["sam"])]
    out = {"rounds_ms_sgd": times["sgd"], "rounds_ms_sam": times["sam"]}
    if r:
        lo, hi, level = median_interval(r)
        out.update({"ratio_rounds_median": statistics.median(r), "ratio_rounds_interval": [lo, hi],
                    "ratio_rounds_interval_level": level})
    return out
