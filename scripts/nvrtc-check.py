#!/usr/bin/env python3
"""Compiles every CUDA C++ kernel in the given directories with NVRTC, the compiler cubecl's
CUDA runtime uses, with the options it passes (`--gpu-architecture=sm_90a`, the CUDA include
path, `-lineinfo`). No GPU is needed: NVRTC only compiles.

    python scripts/nvrtc-check.py [--arch sm_90a] DIR...

Needs the `nvidia-cuda-nvrtc-cu12` and `nvidia-cuda-runtime-cu12` wheels (the library and the
headers). Prints one line per directory; on a failure, the file, NVRTC's log, and exit code 1.
"""
import argparse
import ctypes
import multiprocessing
import os
import pathlib
import sys

import nvidia.cuda_nvrtc
import nvidia.cuda_runtime


def package_dir(module):
    return pathlib.Path(list(module.__path__)[0])


def load_nvrtc():
    lib = package_dir(nvidia.cuda_nvrtc) / "lib"
    candidates = sorted(p for p in lib.glob("libnvrtc.so*") if "alt" not in p.name)
    if not candidates:
        sys.exit(f"nvrtc-check: no libnvrtc.so under {lib}")
    return ctypes.CDLL(str(candidates[0]))


def compile_source(nvrtc, source, name, options):
    """Returns (ok, log, ptx_bytes)."""
    prog = ctypes.c_void_p()
    check(nvrtc, nvrtc.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), name.encode(), 0, None, None), "nvrtcCreateProgram")
    opts = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
    status = nvrtc.nvrtcCompileProgram(prog, len(options), opts)
    size = ctypes.c_size_t()
    check(nvrtc, nvrtc.nvrtcGetProgramLogSize(prog, ctypes.byref(size)), "nvrtcGetProgramLogSize")
    log = ctypes.create_string_buffer(size.value)
    check(nvrtc, nvrtc.nvrtcGetProgramLog(prog, log), "nvrtcGetProgramLog")
    ptx = 0
    if status == 0:
        check(nvrtc, nvrtc.nvrtcGetPTXSize(prog, ctypes.byref(size)), "nvrtcGetPTXSize")
        ptx = size.value
    nvrtc.nvrtcDestroyProgram(ctypes.byref(prog))
    return status == 0, log.value.decode(errors="replace").strip(), ptx


def check(nvrtc, status, what):
    if status != 0:
        nvrtc.nvrtcGetErrorString.restype = ctypes.c_char_p
        sys.exit(f"nvrtc-check: {what} failed: {nvrtc.nvrtcGetErrorString(status).decode()}")


_worker = {}


def _init(options):
    _worker["nvrtc"] = load_nvrtc()
    _worker["options"] = options


def _compile_file(path):
    ok, log, ptx = compile_source(_worker["nvrtc"], path.read_text(), path.name, _worker["options"])
    return path, ok, log, ptx


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="sm_90a", help="NVRTC --gpu-architecture (H100/H200: sm_90a)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel NVRTC processes")
    parser.add_argument("dirs", nargs="+", type=pathlib.Path)
    args = parser.parse_args()
    nvrtc = load_nvrtc()
    major, minor = ctypes.c_int(), ctypes.c_int()
    nvrtc.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
    include = package_dir(nvidia.cuda_runtime) / "include"
    options = [f"--gpu-architecture={args.arch}", f"--include-path={include}", "-lineinfo"]
    failed = 0
    pool = multiprocessing.Pool(max(1, args.jobs), initializer=_init, initargs=(options,))
    for d in args.dirs:
        files = sorted(d.glob("*.cu"))
        if not files:
            sys.exit(f"nvrtc-check: no .cu files in {d}")
        ptx_total, bad = 0, 0
        for f, ok, log, ptx in pool.imap(_compile_file, files):
            if not ok:
                bad += 1
                print(f"FAILED {f}:\n{log}", file=sys.stderr)
            ptx_total += ptx
        failed += bad
        version = f"NVRTC {major.value}.{minor.value} for {args.arch}"
        print(f"{d}: {len(files)} kernels compiled by {version}, {ptx_total} bytes of PTX" if not bad else f"{d}: {bad} of {len(files)} kernels failed ({version})")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
