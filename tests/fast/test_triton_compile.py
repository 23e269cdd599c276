"""The Triton kernels compile to sm_90 machine code on any machine (no GPU needed): the
interpreter that runs the other Triton tests on CPU accepts programs the compiler rejects
(non-constexpr globals, loop-carried values that change type), so CI compiles them too.

Each row is one specialisation (``KP`` levels, ``BLOCK_T`` tokens, ``DRAW``) the launcher picks.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton")

SCRIPT = r"""
import json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from probmoe_fast.ops.triton_kernels import route_bwd_kernel, route_fwd_kernel

POINTERS = {"perm_ptr": "*i64", "seed_ptr": "*i64", "idx_ptr": "*i64", "size_ptr": "*i64",
            "zrel_ptr": "*fp64", "ptab_ptr": "*fp64", "hbuf_ptr": "*fp64", "rtab_ptr": "*fp64",
            "qbuf_ptr": "*fp64"}
KP, BLOCK_T, DRAW = json.loads(sys.argv[1])
for kernel in (route_fwd_kernel, route_bwd_kernel):
    consts = {"KP": KP, "BLOCK_T": BLOCK_T}
    if "DRAW" in kernel.arg_names:
        consts["DRAW"] = DRAW
    signature = {name: "constexpr" if name in consts else POINTERS.get(
        name, "*fp32" if name.endswith("_ptr") else "i32") for name in kernel.arg_names}
    source = ASTSource(fn=kernel, signature=signature, constexprs={
        (kernel.arg_names.index(name),): value for name, value in consts.items()})
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": 4, "num_stages": 1})
    assert compiled.asm["cubin"], kernel
print("compiled")
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU every other Triton test compiles "
                    "and launches these kernels for the device at hand")
@pytest.mark.parametrize("kp,block_t,draw", [
    (16, 64, True),    # k = 8 (9 levels): the MoE size, sampling forward
    (64, 16, False),   # k = 32: the largest level axis, no sampling
    (2, 64, True),     # k = 0 or 1: the smallest level axis
])
def test_kernels_compile_for_sm90(kp, block_t, draw):
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps([kp, block_t, draw])],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "compiled" in done.stdout, done.stderr[-3000:]
