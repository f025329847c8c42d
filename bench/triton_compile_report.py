"""Compile the Triton kernels for a GPU architecture without a GPU, and report what the compiler made.

    python bench/triton_compile_report.py              # sm_90 (H100 / H200), bf16, dino_s8 at 448 px, batch 32
    python bench/triton_compile_report.py --arch 100   # another architecture
    python bench/triton_compile_report.py --first-config   # one config per kernel (what CI runs, ~10 s)

For each LiFT conv kernel (both loop forms, see ``LIFT_TRITON_LOOP``) and the matcher, each block
config of its autotune list is compiled as a GPU run would specialise it (unit strides as
constants, multiples of 16 marked divisible), then assembled with Triton's own ``ptxas``. One row
per config: registers per thread, spill bytes, shared memory, the ``cp.async`` copies and
``wgmma`` ops in the TTGIR (a software-pipelined loop shows its copies; a loop that is not
pipelined shows none) and the number of loops. It answers "is this loop pipelined, does it
spill" before any device time is spent; it says nothing about speed.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from typing import Any

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from benchlib import commit
from lift_rt.kernels.conv2d import CONFIGS as CONV_CONFIGS
from lift_rt.kernels.conv2d import _conv2d_nhwc_kernel
from lift_rt.kernels.match_nearest import CONFIGS as MATCH_CONFIGS
from lift_rt.kernels.match_nearest import _nearest_kernel
from lift_rt.kernels.up_conv import CONFIGS as UP_CONFIGS
from lift_rt.kernels.up_conv import _up_conv_kernel


@dataclass
class Case:
    """One kernel specialisation: its pointer arguments, constexprs and the integer arguments of a real call."""

    name: str
    kernel: Any  # the autotuner around the jit function
    configs: list[triton.Config]
    pointers: tuple[str, ...]
    constexprs: dict[str, Any]
    ints: dict[str, int]


def dino_s8_cases(batch: int, px: int) -> list[Case]:
    """The second conv (3x3, 192 -> 192), the fused up step (384 + 32 -> 192) and the 12544-row matcher."""
    fine, coarse = px // 4, px // 8
    conv_ints = dict(M=batch * fine * fine, H=fine, W=fine, HO=fine, WO=fine, CIN=192, COUT=192,
                     sxb=fine * fine * 192, sxh=fine * 192, sxw=192, sxc=1)
    up_ints = dict(M=batch * coarse * coarse, HC=coarse, WC=coarse, C=384, N=192,
                   sfb=coarse * coarse * 384, sfh=coarse * 384, sfw=384, sfc=1)
    rows = 12544
    match_ints = dict(N=rows, M=rows, D=384, cols_per_split=2560, splits=5, N_CLASS=16384, M_CLASS=16384,
                      ssb=rows * 384, ssn=384, ssd=1, stb=rows * 384, stm=384, std=1, smb=rows, smm=1)
    cases = []
    for flat in (False, True):
        form = "flat" if flat else "nested"
        cases.append(Case(f"conv2d 3x3 {form}", _conv2d_nhwc_kernel, CONV_CONFIGS, ("x_ptr", "w_ptr", "b_ptr", "y_ptr"),
                          dict(KSIZE=3, STRIDE=1, RELU=True, DOT_PRECISION="ieee", FLAT=flat), conv_ints))
        cases.append(Case(f"up_conv {form}", _up_conv_kernel, UP_CONFIGS,
                          ("f_ptr", "img2_ptr", "img1_ptr", "wx_ptr", "wb_ptr", "wimg_ptr", "bias_ptr", "y_ptr"),
                          dict(IMG_C=32, DOT_PRECISION="ieee", FLAT=flat), up_ints))
    cases.append(Case("match_nearest", _nearest_kernel, MATCH_CONFIGS,
                      ("src_ptr", "tgt_ptr", "mask_ptr", "inv_src_ptr", "inv_tgt_ptr", "val_ptr", "idx_ptr"),
                      dict(NORMALIZE=True, HAS_MASK=False), match_ints))
    return cases


# Pointer element types where they are not the activation dtype.
POINTER_TYPES = {"mask_ptr": "*u8", "inv_src_ptr": "*fp32", "inv_tgt_ptr": "*fp32", "val_ptr": "*fp32", "idx_ptr": "*i32"}


def compile_case(case: Case, config: triton.Config, arch: int, dtype: str) -> dict[str, Any]:
    """Compile one config of ``case`` for ``sm_<arch>`` and read registers, spills and the TTGIR's shape."""
    fn = case.kernel.fn
    names = fn.arg_names
    constants = {**case.constexprs, **config.kwargs, **{n: 1 for n, v in case.ints.items() if v == 1}}
    signature = {n: "constexpr" if n in constants else POINTER_TYPES.get(n, f"*{dtype}") if n in case.pointers else "i32"
                 for n in names}
    divisible = set(case.pointers) | {n for n, v in case.ints.items() if v % 16 == 0 and v != 1}
    source = ASTSource(fn, signature, {(names.index(n),): v for n, v in constants.items()},
                       {(names.index(n),): [["tt.divisibility", 16]] for n in divisible})
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": config.num_warps, "num_stages": config.num_stages})
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.ptx")
        with open(path, "w") as f:
            f.write(compiled.asm["ptx"])
        log = subprocess.run([ptxas, f"-arch=sm_{arch}a" if arch >= 90 else f"-arch=sm_{arch}", "-v", path, "-o", os.devnull],
                             capture_output=True, text=True, check=True).stderr
    ttgir = compiled.asm["ttgir"]
    return {
        "registers": int(re.search(r"Used (\d+) registers", log).group(1)),
        "spill_bytes": sum(int(v) for v in re.findall(r"(\d+) bytes spill stores", log)),
        "shared_bytes": compiled.metadata.shared,
        "async_copies": ttgir.count("async_copy_global_to_local"),
        "wgmma": ttgir.count("ttng.warp_group_dot "),
        "loops": ttgir.count("scf.for"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability x 10 (default 90: H100 / H200)")
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"], help="activation / weight dtype")
    parser.add_argument("--batch", type=int, default=32, help="batch of the LiFT conv cases (default 32)")
    parser.add_argument("--px", type=int, default=448, help="image size of the LiFT conv cases (default 448)")
    parser.add_argument("--first-config", action="store_true", help="only the first block config of each kernel (quick)")
    args = parser.parse_args(argv)
    print(f"Triton {triton.__version__}, sm_{args.arch}, {args.dtype}, dino_s8 {args.px} px batch {args.batch}; "
          f"commit {commit()}, {datetime.date.today().isoformat()}\n")
    print("| kernel | BLOCK_M x N x K, warps, stages | registers | spill bytes | shared KB | cp.async copies | wgmma | loops |")
    print("|---|---|---|---|---|---|---|---|")
    for case in dino_s8_cases(args.batch, args.px):
        for config in case.configs[:1] if args.first_config else case.configs:
            r = compile_case(case, config, args.arch, args.dtype)
            block = "{BLOCK_M}x{BLOCK_N}x{BLOCK_K}".format(**config.kwargs)
            print(f"| {case.name} | {block}, {config.num_warps}, {config.num_stages} | {r['registers']} | {r['spill_bytes']} | "
                  f"{r['shared_bytes'] / 1024:.0f} | {r['async_copies']} | {r['wgmma']} | {r['loops']} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
