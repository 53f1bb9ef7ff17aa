"""The hot loops compile to SIMD code: the block maximum, the exp-sum and the gradient write.

Cached code cannot be inspected, so each loop is compiled here again from its Python source with
the kernels' own flags and cache off, for the array type the kernels pass (a contiguous 1-D slice).
"""

import re

import llvmlite.binding as ll
import pytest
from numba import njit, types

from fastxent.kernels.cpu import common, softmax
from fastxent.kernels.cpu.numeric import block_max

pytestmark = pytest.mark.skipif(
    not {"avx2", "fma"} <= {k for k, v in ll.get_host_cpu_features().items() if v},
    reason="the packed-instruction patterns below are x86 AVX2/FMA",
)

F32 = types.float32
SEG = types.Array(F32, 1, "C")


def _asm(kernel, signature):
    fresh = njit(**dict(common.REDUCE, cache=False))(kernel.py_func)
    fresh.compile(signature)
    return fresh.inspect_asm(signature)


def _packed(asm, mnemonic):
    """Packed single-precision instructions on vector registers, e.g. ``vfmadd213ps %zmm1, ...``."""
    return re.findall(rf"\b{mnemonic}\s+[^\n]*%[xyz]mm", asm)


def _block_max_of(xs):
    return block_max(xs)


@pytest.mark.parametrize("storage", [types.float32, types.uint16, types.int16],
                         ids=["float32", "bfloat16", "float16"])
def test_block_max_is_a_packed_integer_max_and_min(storage):
    """On the bit patterns: 32-bit lanes for float32, 16-bit lanes for the half formats."""
    asm = _asm(njit(_block_max_of), (types.Array(storage, 1, "C"),))
    width = "d" if storage == types.float32 else "w"
    assert re.search(rf"\bvpmaxs{width}\s+[^\n]*%[xyz]mm", asm)
    assert re.search(rf"\bvpmins{width}\s+[^\n]*%[xyz]mm", asm)


def test_exp_sum_is_packed_fma_and_calls_no_libm_exp():
    asm = _asm(softmax._block_sumexp, (SEG, F32, types.none))
    assert _packed(asm, r"vfmadd\d{3}ps"), "the polynomial of exp32 is not vectorised"
    assert _packed(asm, "vpslld"), "the exponent is not assembled with a packed shift"
    assert not re.search(r"call[^\n]*exp", asm), "a scalar exp call is left in the loop"


@pytest.mark.parametrize("inplace", [False, True], ids=["out", "inplace"])
def test_gradient_write_is_packed(inplace):
    dst = types.none if inplace else SEG
    sig = (SEG, dst, types.none, types.none, F32, F32, F32, F32, F32, types.none)
    asm = _asm(softmax._segment_grad, sig)
    assert _packed(asm, r"vfmadd\d{3}ps")
    assert _packed(asm, "vmovups")


@pytest.mark.parametrize("inplace", [False, True], ids=["out", "inplace"])
def test_kept_exp_sum_is_packed(inplace):
    """The fused kernel's statistics pass: exp-sum that also writes each term."""
    dst = types.none if inplace else SEG
    asm = _asm(softmax._block_sumexp_kept, (SEG, dst, F32))
    assert _packed(asm, r"vfmadd\d{3}ps")
    assert _packed(asm, "vmovups")
    assert not re.search(r"call[^\n]*exp", asm)


@pytest.mark.parametrize("terms", ["in-destination", "scratch"])
def test_gradient_scaling_of_kept_terms_is_packed(terms):
    """The fused kernel's gradient pass: kept terms times a scale (float32, or from a float32
    scratch into a bfloat16 gradient)."""
    if terms == "in-destination":
        sig = (SEG, types.none, types.none, types.none, F32, F32, F32)
    else:
        sig = (types.Array(types.uint16, 1, "C"), SEG, types.none, types.none, F32, F32, F32)
    asm = _asm(softmax._segment_scale, sig)
    assert _packed(asm, r"v(fmadd|fmsub|mul)\w*ps")


def test_no_isfinite_in_the_kernels():
    """Numba computes ``math.isfinite(x)`` as "``x - x`` is ordered". Under the kernels' fast-math
    flags (``reassoc``, ``nsz``) LLVM folds ``x - x`` to 0, so every value tests finite: the KL
    kernel kept an infinite offset and returned NaN when P's first block was masked. Kernels
    compare with the infinities instead."""
    import pathlib

    import fastxent.kernels

    root = pathlib.Path(fastxent.kernels.__file__).parent
    uses = [f"{path.relative_to(root)}:{number}"
            for path in sorted(root.rglob("*.py"))
            for number, line in enumerate(path.read_text().splitlines(), 1)
            if "math.isfinite(" in line]
    assert not uses, uses

