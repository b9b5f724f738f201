#!/usr/bin/env bash
# Every GPU check in one go, for a machine with a CUDA GPU and PyTorch (JAX if present) but
# no Rust. Build here first, for the GPU machine's CUDA (13.0 on the H100/H200 machines; the
# default without nvcc would be the newest CUDA cudarc knows), with
#   CUDARC_CUDA_VERSION=13000 cargo build --release --features cuda && mkdir -p bin-gpu && cp target/release/plateau bin-gpu/
# and, for the GEMM comparison (optional),
#   CUDARC_CUDA_VERSION=13000 cargo build --release --features cuda --example gemm_bench && cp target/release/examples/gemm_bench bin-gpu/
# then run this script there from the repository root (bin-gpu/ travels with it).
# Writes everything to ${OUT:-gpu-out}/ : the device name, the CUDA parity runs, and the
# benchmark JSON of plateau, PyTorch eager, torch.compile and JAX on the same card.
#
# The checks run most important first and share one time budget (${BUDGET:-420} seconds):
# a check that would start with too little time left is skipped and listed in skipped.txt,
# so the script always finishes, with what it measured, inside the budget.
#
# A rehearsal on a machine without a GPU runs the same checks on other devices:
#   DEVICE=wgpu TORCH_DEVICE=cpu BUDGET=300 OUT=/tmp/rehearsal bash scripts/gpu-check.sh
# (bin-gpu/ then holds any build; nvidia-smi may be missing; parity.txt compares reference
# and wgpu).
set -uo pipefail
out=${OUT:-gpu-out}
mkdir -p "$out"
P=bin-gpu/plateau
# plateau's device and PyTorch's (cuda unless rehearsing).
DEV=${DEVICE:-cuda}
TDEV=${TORCH_DEVICE:-cuda}
PY=${PYTHON:-$(command -v python3 || command -v python)}
deadline=$(( $(date +%s) + ${BUDGET:-420} ))

# check NAME SECONDS CMD...: runs CMD with at most SECONDS (less if the budget is nearly
# spent), appending stdout to $out/NAME and stderr to $out/NAME.err, timing it in times.txt.
check() {
  local name=$1 limit=$2; shift 2
  local left=$(( deadline - $(date +%s) ))
  if (( left < 15 )); then
    echo "$name: $*" >> "$out/skipped.txt"
    return
  fi
  (( limit > left )) && limit=$left
  local start=$(date +%s)
  timeout "$limit" "$@" >> "$out/$name" 2>> "$out/$name.err"
  echo "$name rc=$? $(( $(date +%s) - start ))s: $*" >> "$out/times.txt"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt" 2>&1
# cubecl compiles kernels with NVRTC at run time: it needs libnvrtc on the library path and
# the CUDA headers under $CUDA_PATH/include. Use the toolkit, else the NVIDIA wheels.
if [ -z "${CUDA_PATH:-}" ]; then
  for d in /usr/local/cuda /opt/cuda; do [ -f "$d/include/cuda_runtime.h" ] && export CUDA_PATH=$d && break; done
fi
for l in lib64 lib; do [ -d "${CUDA_PATH:-/nonexistent}/$l" ] && export LD_LIBRARY_PATH="$CUDA_PATH/$l${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; done
if [ -z "${CUDA_PATH:-}" ]; then
  # The wheels: headers and libnvrtc, in one folder (CUDA 13) or two (CUDA 12).
  if wheels=$($PY scripts/nvrtc-check.py --print-cuda 2>/dev/null); then
    export CUDA_PATH=$(echo "$wheels" | sed -n 1p)
    export LD_LIBRARY_PATH="$(echo "$wheels" | sed -n 2p)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  fi
fi
echo "CUDA_PATH=${CUDA_PATH:-unset} LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-unset}" >> "$out/gpu.txt"
# Compiled kernels (PTX) are kept here, so a kernel NVRTC compiled once is loaded, not
# compiled again, by every later run (the profiles, ResNet-18's second bench).
export PLATEAU_KERNEL_CACHE=${PLATEAU_KERNEL_CACHE:-$(mktemp -d)}
# Parity: the same losses on the reference and on CUDA.
for m in mlp cnn; do
  for d in reference $DEV; do
    check "run-$m-$d.txt" 60 $P run --model $m --optimizer sam --steps 3 --batch-size 32 --device $d
  done
done
# The verdict of the parity runs in parity.txt: the largest loss difference per model.
$PY - "$out" "$DEV" > "$out/parity.txt" 2>&1 <<'PY'
import re, sys, pathlib
out = pathlib.Path(sys.argv[1])
def losses(p):
    return [float(x) for x in re.findall(r"loss ([-0-9.eE+naNinf]+)", p.read_text())] if p.exists() else []
for m in ("mlp", "cnn"):
    dev = sys.argv[2]
    ref, cuda = losses(out / f"run-{m}-reference.txt"), losses(out / f"run-{m}-{dev}.txt")
    if not ref or len(ref) != len(cuda):
        print(f"{m}: FAIL, {len(ref)} reference and {len(cuda)} {dev} losses")
        continue
    d = max(abs(a - b) / max(abs(a), 1e-6) for a, b in zip(ref, cuda))
    print(f"{m}: {'PASS' if d < 1e-3 else 'FAIL'}, largest relative loss difference {d:.2e} over {len(ref)} steps (reference {ref}, {dev} {cuda})")
PY
# The same run again, its kernels now in the cache: times.txt shows what NVRTC cost.
check run-cnn-$DEV-cached.txt 60 $P run --model cnn --optimizer sam --steps 3 --batch-size 32 --device $DEV
# The issue's GPU target first: plateau's SGD and SAM steps against PyTorch eager.
for m in mlp cnn; do
  check bench.jsonl 90 $P bench --model $m --device $DEV --rounds 30 --json
  check bench.jsonl 90 $PY benches/sam_torch.py --model $m --device $TDEV --rounds 30
done
for m in mlp cnn; do
  check "profile-$m.txt" 60 $P bench --model $m --device $DEV --rounds 3 --no-naive --profile
done
# plateau's GEMM against cubek's f32 matmuls and PyTorch's (TF32 off) on the same shapes:
# whether the GEMM kernel is where a step loses to PyTorch.
if [ -x bin-gpu/gemm_bench ]; then
  check gemm.jsonl 90 bin-gpu/gemm_bench --device $DEV --runs 7 --json
fi
check gemm-torch.jsonl 60 $PY - "$TDEV" <<'PY'
import json, sys, time, torch
dev = torch.device(sys.argv[1])
torch.backends.cuda.matmul.allow_tf32 = False
shapes = [("mlp fc1 forward", 128, 784, 256, False), ("mlp fc2 forward", 128, 256, 256, False),
          ("mlp fc1 weight grad", 784, 128, 256, True), ("conv 3x3 64->64, 8x32x32", 8192, 576, 64, False),
          ("square 512", 512, 512, 512, False), ("square 1024", 1024, 1024, 1024, False)]
if dev.type == "cuda":
    shapes += [("square 4096", 4096, 4096, 4096, False), ("conv 3x3 64->64, 128x32x32", 131072, 576, 64, False)]
sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
for label, m, k, n, ta in shapes:
    a = torch.randn(k, m, device=dev).t() if ta else torch.randn(m, k, device=dev)
    b = torch.randn(k, n, device=dev)
    t = []
    for i in range(9):
        sync(); s = time.perf_counter(); a @ b; sync()
        if i >= 2:
            t.append((time.perf_counter() - s) * 1e3)
    ms = sorted(t)[len(t) // 2]
    print(json.dumps({"shape": label, "m": m, "k": k, "n": n, "a_transposed": ta, "torch_ms": ms, "torch_gflops": 2 * m * n * k / ms / 1e6}))
PY
# SAM's norm summed by its own second launch instead of by the perturbation (the default on
# CUDA): what the launch saved is worth on this card.
for m in mlp cnn; do
  check bench-own-sums.jsonl 60 env PLATEAU_SUMS_IN_READERS=off $P bench --model $m --device $DEV --rounds 30 --no-naive --json
done
check train-$DEV.txt 60 $P train --device $DEV --epochs 2 --hidden 64
check bench.jsonl 150 $P bench --model resnet18 --device $DEV --rounds 10 --no-naive --json
check bench.jsonl 90 $PY benches/sam_torch.py --model resnet18 --device $TDEV --rounds 10
check profile-resnet18.txt 120 $P bench --model resnet18 --device $DEV --rounds 2 --warmup 1 --no-naive --profile
for m in mlp cnn resnet18; do
  check bench.jsonl 120 $PY benches/sam_torch.py --model $m --device $TDEV --rounds 30 --compile
  check bench.jsonl 90 $PY benches/sam_jax.py --model $m --rounds 30
done
# PyTorch as it comes (TF32 in cuDNN's convolutions), next to the f32 rows above.
for m in mlp cnn; do
  check bench.jsonl 60 $PY benches/sam_torch.py --model $m --device $TDEV --rounds 30 --tf32
done
du -sh "$PLATEAU_KERNEL_CACHE" >> "$out/times.txt" 2>&1
# Every row as BENCHMARKS.md's tables, and plateau's SGD step against PyTorch eager's.
$PY scripts/bench-table.py "$out/bench.jsonl" > "$out/table.md" 2>> "$out/table.md.err"
echo "done: $(ls "$out")"
