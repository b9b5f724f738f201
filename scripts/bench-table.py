#!/usr/bin/env python3
"""The Markdown tables BENCHMARKS.md holds, from the JSON lines `plateau bench --json` and the
peer scripts print (e.g. the `bench.jsonl` of scripts/gpu-check.sh):

    python3 scripts/bench-table.py bench.jsonl [more.jsonl ...]

First every row (model, batch, framework, the device it names, median step times, ratios, the
ratio round by round with its interval, launches and peak memory where the framework reports them), in a stable order; then, for each
plateau row, its SGD step against PyTorch eager's at the same model and batch (the issue's GPU
target: plateau's SGD step at least as fast). Lines that are not JSON objects with a
`sgd_step_ms` (a failed run's output) are skipped and counted on stderr.
"""
import json, sys

MODELS = ["mlp", "cnn", "resnet18"]
FRAMEWORKS = ["plateau", "pytorch eager", "torch.compile", "jax.jit"]


def rows(paths):
    out, skipped = [], 0
    for path in paths:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    r = json.loads(line)
                except json.JSONDecodeError:
                    skipped += 1
                    continue
                if not isinstance(r, dict) or not isinstance(r.get("sgd_step_ms"), (int, float)):
                    skipped += 1
                    continue
                r.setdefault("framework", "plateau")
                out.append(r)
    if skipped:
        print(f"bench-table: skipped {skipped} line(s) without a benchmark result", file=sys.stderr)
    return out


def order(r):
    m = r.get("model", "")
    fw = r["framework"]
    return (MODELS.index(m) if m in MODELS else len(MODELS), m, r.get("batch") or 0,
            FRAMEWORKS.index(fw) if fw in FRAMEWORKS else len(FRAMEWORKS), fw, bool(r.get("tf32")))


def ms(v):
    return "" if v is None else f"{v:,.2f}"


def ratio(v):
    return "" if v is None else f"{v:.3f}"


def pair(a, b, fmt):
    if a is None and b is None:
        return ""
    return f"{fmt(a)} / {fmt(b)}"


def rounds(r):
    """Each SAM step against its round's SGD step: the median and its interval (coverage)."""
    m, iv, level = r.get("ratio_rounds_median"), r.get("ratio_rounds_interval"), r.get("ratio_rounds_interval_level")
    if m is None or not iv:
        return ""
    return f"{m:.3f} ({iv[0]:.3f}-{iv[1]:.3f}, {100 * level:.0f}%)"


def framework(r):
    """plateau rows name the backend too (reference, wgpu, cuda)."""
    fw = r["framework"]
    return f"{fw}, {r['device']}" if fw == "plateau" and r.get("device") else fw


def device(r):
    """The device the row names; TF32 marked where it applies (not on a CPU), and plateau's
    GEMMs where they run in the CPU layout (`gemm_layout`; the GPU layout is the default)."""
    tf32 = r.get("tf32") and r.get("device") != "cpu"
    layout = ", CPU GEMM layout" if r.get("gemm_layout") == "cpu" else ""
    return (r.get("device_name") or r.get("device") or "") + (", TF32" if tf32 else "") + layout


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__.strip().split("\n\n")[1])
    rs = sorted(rows(sys.argv[1:]), key=order)
    if not rs:
        sys.exit("bench-table: no benchmark results in " + ", ".join(sys.argv[1:]))
    mib = lambda v: f"{v / 2**20:,.1f}"
    print("| model | batch | framework | device | SGD ms | SAM ms | naive SAM ms | ratio | round by round (interval) | naive ratio | launches SGD / SAM | peak MiB SGD / SAM |")
    print("|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rs:
        print(f"| {r.get('model', '')} | {r.get('batch', '')} | {framework(r)} | {device(r)} | {ms(r['sgd_step_ms'])} | "
              f"{ms(r.get('sam_step_ms'))} | {ms(r.get('naive_sam_step_ms'))} | {ratio(r.get('ratio'))} | {rounds(r)} | "
              f"{ratio(r.get('naive_ratio'))} | {pair(r.get('launches_sgd'), r.get('launches_sam'), str)} | "
              f"{pair(r.get('peak_memory_bytes_sgd'), r.get('peak_memory_bytes_sam'), mib)} |")
    lines = []
    for p in (r for r in rs if r["framework"] == "plateau"):
        for t in (r for r in rs if r["framework"] == "pytorch eager" and not r.get("tf32")):
            if (t.get("model"), t.get("batch")) == (p.get("model"), p.get("batch")):
                x = p["sgd_step_ms"] / t["sgd_step_ms"]
                lines.append(f"| {p['model']} | {p['batch']} | {framework(p)}: {device(p)} | {device(t)} | {ms(p['sgd_step_ms'])} | "
                             f"{ms(t['sgd_step_ms'])} | {x:.3f} | {'met' if x <= 1.0 else 'missed'} |")
    if lines:
        print()
        print("| model | batch | plateau | PyTorch eager on | plateau SGD ms | PyTorch SGD ms | plateau / PyTorch | at least as fast |")
        print("|---|---:|---|---|---:|---:|---:|---|")
        print("\n".join(lines))


if __name__ == "__main__":
    main()
