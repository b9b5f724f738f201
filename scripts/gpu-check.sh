#!/usr/bin/env bash
# Every GPU check in one go, for a machine with a CUDA GPU, PyTorch and JAX but no Rust:
# build here first with
#   cargo build --release --features cuda && mkdir -p bin-gpu && cp target/release/plateau bin-gpu/
# then run this script there from the repository root (bin-gpu/ travels with it).
# Writes everything to ${OUT:-gpu-out}/ : the device name, the CUDA parity run, and the
# benchmark JSON of plateau, PyTorch eager, torch.compile and JAX on the same card.
set -uo pipefail
out=${OUT:-gpu-out}
mkdir -p "$out"
P=bin-gpu/plateau
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt" 2>&1
# Parity: the same losses on the reference and on CUDA (one SAM step of the CNN and the MLP).
for m in cnn mlp; do
  for d in reference cuda; do
    timeout 120 $P run --model $m --optimizer sam --steps 3 --batch-size 32 --device $d > "$out/run-$m-$d.txt" 2>&1
  done
done
timeout 120 $P train --device cuda --epochs 2 --hidden 64 > "$out/train-cuda.txt" 2>&1
timeout 60 $P train --device reference --epochs 2 --hidden 64 > "$out/train-reference.txt" 2>&1
# Benchmarks: plateau and the peers, same models and batches, one card.
for m in mlp cnn resnet18; do
  timeout 240 $P bench --model $m --device cuda --rounds 30 --json >> "$out/bench.jsonl" 2>> "$out/bench.err"
  timeout 240 $P bench --model $m --device cuda --rounds 3 --no-naive --profile >> "$out/profile.txt" 2>&1
  timeout 240 python benches/sam_torch.py --model $m --device cuda --rounds 30 >> "$out/bench.jsonl" 2>> "$out/bench.err"
  timeout 300 python benches/sam_torch.py --model $m --device cuda --rounds 30 --compile >> "$out/bench.jsonl" 2>> "$out/bench.err"
  timeout 240 python benches/sam_jax.py --model $m --rounds 30 >> "$out/bench.jsonl" 2>> "$out/bench.err"
done
echo "done: $(ls "$out")"
