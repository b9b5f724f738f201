#!/usr/bin/env python3
"""Compiles every CUDA C++ kernel in the given directories with NVRTC, the compiler cubecl's
CUDA runtime uses, with the options it passes (`--gpu-architecture=sm_90a`, the CUDA include
path, `-lineinfo`). No GPU is needed: NVRTC only compiles.

    python scripts/nvrtc-check.py [--arch sm_90a] [--ptxas PATH [--max-spill BYTES]] DIR...

With `--ptxas` (the assembler from the `nvidia-cuda-nvcc` wheel), each kernel's PTX is also
assembled for the architecture with `ptxas -v`, as the driver does when it loads it: each
directory's line then gives the most registers a kernel uses and the kernels that spill
registers to local memory, and a kernel spilling more than `--max-spill` bytes fails.

Needs NVIDIA's wheels with libnvrtc and the headers: `nvidia-cuda-nvrtc-cu12` and
`nvidia-cuda-runtime-cu12` for CUDA 12, `nvidia-cuda-nvrtc` and `nvidia-cuda-runtime` for CUDA 13
(the newest installed is used). Prints one line per directory; on a failure, the file, NVRTC's log, and exit code 1.
"""
import argparse
import ctypes
import multiprocessing
import os
import pathlib
import re
import subprocess
import sys
import tempfile

try:
    import nvidia
except ImportError:
    sys.exit("nvrtc-check: no NVIDIA wheels installed (see the docstring)")


def _major(lib):
    """The CUDA major version of `libnvrtc.so.N[...]` (0 for an unversioned name)."""
    tail = lib.name.split(".so.", 1)[1] if ".so." in lib.name else "0"
    return int(tail.split(".")[0])


def find_cuda():
    """libnvrtc and the CUDA headers from the installed NVIDIA wheels (CUDA 12's
    `nvidia-cuda-nvrtc-cu12` and `nvidia-cuda-runtime-cu12`, or CUDA 13's `nvidia-cuda-nvrtc`
    and `nvidia-cuda-runtime`), the newest CUDA when several are installed."""
    roots = [pathlib.Path(p) for p in nvidia.__path__]
    libs = [p for r in roots for p in r.glob("**/lib/libnvrtc.so*") if "alt" not in p.name and "builtins" not in p.name]
    if not libs:
        sys.exit("nvrtc-check: no libnvrtc in the installed NVIDIA wheels (see the docstring)")
    lib = max(libs, key=_major)
    # CUDA 13's wheels share one folder (nvidia/cu13/{lib,include}); CUDA 12's headers come
    # in their own wheel (nvidia/cuda_runtime/include).
    beside = lib.parent.parent / "include"
    if (beside / "cuda_runtime.h").exists():
        return lib, beside
    headers = sorted(p.parent for r in roots for p in r.glob("cuda_runtime/include/cuda_runtime.h"))
    if not headers:
        sys.exit(f"nvrtc-check: no CUDA headers for {lib} (see the docstring)")
    return lib, headers[0]


def load_nvrtc():
    lib = find_cuda()[0]
    # NVRTC loads its builtins library by name at compile time: load it first, globally.
    for builtins in sorted(lib.parent.glob("libnvrtc-builtins.so*")):
        if "alt" not in builtins.name:
            ctypes.CDLL(str(builtins), mode=ctypes.RTLD_GLOBAL)
    return ctypes.CDLL(str(lib))


def compile_source(nvrtc, source, name, options):
    """Returns (ok, log, ptx): the PTX as bytes, empty on a failure."""
    prog = ctypes.c_void_p()
    check(nvrtc, nvrtc.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), name.encode(), 0, None, None), "nvrtcCreateProgram")
    opts = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
    status = nvrtc.nvrtcCompileProgram(prog, len(options), opts)
    size = ctypes.c_size_t()
    check(nvrtc, nvrtc.nvrtcGetProgramLogSize(prog, ctypes.byref(size)), "nvrtcGetProgramLogSize")
    log = ctypes.create_string_buffer(size.value)
    check(nvrtc, nvrtc.nvrtcGetProgramLog(prog, log), "nvrtcGetProgramLog")
    ptx = b""
    if status == 0:
        check(nvrtc, nvrtc.nvrtcGetPTXSize(prog, ctypes.byref(size)), "nvrtcGetPTXSize")
        buf = ctypes.create_string_buffer(size.value)
        check(nvrtc, nvrtc.nvrtcGetPTX(prog, buf), "nvrtcGetPTX")
        ptx = buf.raw[: size.value].rstrip(b"\0")
    nvrtc.nvrtcDestroyProgram(ctypes.byref(prog))
    return status == 0, log.value.decode(errors="replace").strip(), ptx


def assemble(ptxas, arch, ptx):
    """`ptxas -v` on the PTX: (registers, spilled bytes: stores + loads), or an error string."""
    with tempfile.TemporaryDirectory() as d:
        src = pathlib.Path(d) / "k.ptx"
        src.write_bytes(ptx)
        r = subprocess.run([ptxas, f"-arch={arch}", "-v", str(src), "-o", os.devnull], capture_output=True, text=True)
    if r.returncode != 0:
        return r.stderr.strip() or f"ptxas exited with {r.returncode}"
    regs = [int(x) for x in re.findall(r"Used (\d+) registers", r.stderr)]
    spills = [int(a) + int(b) for a, b in re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", r.stderr)]
    if not regs:
        return f"no register count in ptxas's output: {r.stderr.strip()}"
    return max(regs), sum(spills)


def check(nvrtc, status, what):
    # An exception, not sys.exit: this runs in pool workers, where SystemExit would hang.
    if status != 0:
        nvrtc.nvrtcGetErrorString.restype = ctypes.c_char_p
        raise RuntimeError(f"nvrtc-check: {what} failed: {nvrtc.nvrtcGetErrorString(status).decode()}")


_worker = {}


def _init(options, ptxas, arch):
    _worker["nvrtc"] = load_nvrtc()
    _worker["options"] = options
    _worker["ptxas"] = ptxas
    _worker["arch"] = arch


def _compile_file(path):
    ok, log, ptx = compile_source(_worker["nvrtc"], path.read_text(), path.name, _worker["options"])
    sass = assemble(_worker["ptxas"], _worker["arch"], ptx) if ok and _worker["ptxas"] else None
    return path, ok, log, len(ptx), sass


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="sm_90a", help="NVRTC --gpu-architecture (H100/H200: sm_90a)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel NVRTC processes")
    parser.add_argument("--print-cuda", action="store_true", help="print the CUDA headers' root (a CUDA_PATH) and libnvrtc's folder, one per line, and exit")
    parser.add_argument("--ptxas", help="also assemble each kernel with this ptxas and report registers and spills")
    parser.add_argument("--max-spill", type=int, default=64, help="with --ptxas: fail a kernel that spills more bytes (stores plus loads) than this")
    parser.add_argument("dirs", nargs="*", type=pathlib.Path)
    args = parser.parse_args()
    if args.print_cuda:
        lib, include = find_cuda()
        print(include.parent)
        print(lib.parent)
        return
    if not args.dirs:
        parser.error("name at least one directory of .cu files")
    if args.ptxas and not (os.path.isfile(args.ptxas) and os.access(args.ptxas, os.X_OK)):
        parser.error(f"--ptxas: {args.ptxas} is not an executable file (ptxas comes with the `nvidia-cuda-nvcc` wheel)")
    nvrtc = load_nvrtc()
    major, minor = ctypes.c_int(), ctypes.c_int()
    nvrtc.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
    include = find_cuda()[1]
    options = [f"--gpu-architecture={args.arch}", f"--include-path={include}", "-lineinfo"]
    failed = 0
    pool = multiprocessing.Pool(max(1, args.jobs), initializer=_init, initargs=(options, args.ptxas, args.arch))
    for d in args.dirs:
        files = sorted(d.glob("*.cu"))
        if not files:
            sys.exit(f"nvrtc-check: no .cu files in {d}")
        ptx_total, bad, regs, spilling = 0, 0, [], []
        for f, ok, log, ptx, sass in pool.imap(_compile_file, files):
            if not ok:
                bad += 1
                print(f"FAILED {f}:\n{log}", file=sys.stderr)
            elif isinstance(sass, str):
                bad += 1
                print(f"FAILED (ptxas) {f}:\n{sass}", file=sys.stderr)
            elif sass is not None:
                regs.append((sass[0], f.stem))
                if sass[1]:
                    spilling.append(f"{f.stem} ({sass[1]} bytes)")
                if sass[1] > args.max_spill:
                    bad += 1
                    print(f"FAILED {f}: spills {sass[1]} bytes of registers (more than --max-spill {args.max_spill})", file=sys.stderr)
            ptx_total += ptx
        failed += bad
        version = f"NVRTC {major.value}.{minor.value} for {args.arch}"
        line = f"{d}: {len(files)} kernels compiled by {version}, {ptx_total} bytes of PTX" if not bad else f"{d}: {bad} of {len(files)} kernels failed ({version})"
        if regs:
            most = max(regs)
            line += f"; ptxas: at most {most[0]} registers ({most[1]}), {len(spilling)} spilling: {', '.join(spilling) or 'none'}"
        print(line)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
