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
