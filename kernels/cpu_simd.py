"""LLVM operations numba does not expose, as numba intrinsics for the CPU kernels: for the sparse
products (kernels/cpu_sparse.py) count trailing zeros, count set bits, the nonzero mask of 64 floats,
and a 16-float multiply-add on array rows; for the optimizer step (kernels/cpu_train._adam) a
multiply-add rounded once, whatever code surrounds it.

Why intrinsics: the sparse products visit only the nonzero entries of a block, and each visit is
one multiply-add of a short row (16 neurons per vector register). Written as numba loops, that row
update either stayed scalar (indices: numba's negative-index checks kept the SLP vectoriser off) or
paid slice bounds logic and reference counting at every visit (views); both cost 3-7x the vector
code below (measured on n=400, m=30 blocks of 128 rows). The arithmetic is numba's own: multiply
and add carry the 'contract' flag, exactly what kernels.cpu_tiles.FASTMATH gives the dense tiles,
so LLVM fuses them into the same single-rounding FMA wherever the tiles get one.
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

_F16 = ir.VectorType(ir.FloatType(), 16)
_F64 = ir.VectorType(ir.FloatType(), 64)


def _rows_ok(*arrays) -> bool:
    """Whether every argument is typed as a 2-D C-contiguous float32 array (its rows are contiguous floats)."""
    return all(isinstance(a, types.Array) and a.ndim == 2 and a.dtype == types.float32 and a.layout == "C"
               for a in arrays)


def _row_ptr(context, builder, sig, args, at, vec=_F16):
    """Pointer to the floats ary[i, j:j + len(vec)] as a vector, where args[at: at + 3] are (ary, i, j) of a 2-D float32
    array and integer indices of any width (no bounds or negative-index checks: callers index inside)."""
    aryty, ary = sig.args[at], args[at]
    i, j = (context.cast(builder, args[at + t], sig.args[at + t], types.intp) for t in (1, 2))
    a = context.make_array(aryty)(context, builder, ary)
    p = cgutils.get_item_pointer(context, builder, aryty, a, [i, j], wraparound=False)
    return builder.bitcast(p, vec.as_pointer())


@intrinsic
def cttz(typingctx, word):
    """The index of the lowest set bit of a nonzero unsigned integer (the result for 0 is undefined)."""
    if not isinstance(word, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        return builder.cttz(args[0], ir.Constant(ir.IntType(1), 1))
    return word(word), codegen


@intrinsic
def popcount(typingctx, word):
    """The number of set bits of an unsigned integer, as int64."""
    if not isinstance(word, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        n = builder.ctpop(args[0])
        return builder.zext(n, ir.IntType(64)) if n.type.width < 64 else n
    return types.int64(word), codegen


@intrinsic
def nonzero_bits64(typingctx, X, i, j):
    """uint64 whose bit t says X[i, j + t] != 0, t < 64 (X 2-D float32, C-contiguous; j + 64 <= X.shape[1])."""
    if not _rows_ok(X):
        return None

    def codegen(context, builder, sig, args):
        v = builder.load(_row_ptr(context, builder, sig, args, 0, _F64), align=4)
        ne = builder.fcmp_unordered("!=", v, ir.Constant(_F64, [0.0] * 64))
        return builder.bitcast(ne, ir.IntType(64))
    return types.uint64(X, i, j), codegen


@intrinsic
def fma_row16(typingctx, dst, di, dj, a, src, si, sj):
    """dst[di, dj + t] = dst[di, dj + t] + a * src[si, sj + t] for t < 16, one contracted multiply-add
    each (dst, src 2-D float32, C-contiguous; a float32)."""
    if not _rows_ok(dst, src) or a != types.float32:
        return None

    def codegen(context, builder, sig, args):
        pd = _row_ptr(context, builder, sig, args, 0)
        ps = _row_ptr(context, builder, sig, args, 4)
        av = builder.insert_element(ir.Constant(_F16, ir.Undefined), args[3], ir.Constant(ir.IntType(32), 0))
        av = builder.shuffle_vector(av, av, ir.Constant(ir.VectorType(ir.IntType(32), 16), [0] * 16))
        prod = builder.fmul(av, builder.load(ps, align=4), flags=("contract",))
        builder.store(builder.fadd(builder.load(pd, align=4), prod, flags=("contract",)), pd, align=4)
        return context.get_dummy_value()
    return types.void(dst, di, dj, a, src, si, sj), codegen


@intrinsic
def fma(typingctx, a, b, c):
    """a * b + c rounded once, for three floats of one type: llvm.fma, the CPU's FMA instruction (libm's
    exact fmaf on a CPU without one). Under fastmath's 'contract', a * b + c is fused or not as LLVM
    sees fit around it, so one source compiled into two loops can round differently; this cannot."""
    if not (isinstance(a, types.Float) and a == b == c):
        return None
    return a(a, b, c), lambda context, builder, sig, args: builder.fma(*args)
