"""numpy's pairwise summation, compiled: sums that equal `ndarray.sum()` to the last bit.

`pairwise_sum` in numpy's `loops_utils.h.src` is what `ndarray.sum()` (float64 `add.reduce`) uses;
a plain loop differs from it in the last bits, so the compiled sweep kernel sums with these.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from numba import njit

_PW_BLOCKSIZE = 128


@njit(cache=True, error_model="numpy")
def _block_sum(a: npt.NDArray[np.float64], lo: int, n: int) -> float:  # pragma: no cover (compiled)
    """numpy's pairwise_sum for n <= 128: a plain loop below 8, else 8 interleaved accumulators."""
    if n < 8:
        res = 0.0
        for i in range(n):
            res += a[lo + i]
        return res
    r0, r1, r2, r3 = a[lo], a[lo + 1], a[lo + 2], a[lo + 3]
    r4, r5, r6, r7 = a[lo + 4], a[lo + 5], a[lo + 6], a[lo + 7]
    i = 8
    end = n - (n % 8)
    while i < end:
        r0 += a[lo + i]
        r1 += a[lo + i + 1]
        r2 += a[lo + i + 2]
        r3 += a[lo + i + 3]
        r4 += a[lo + i + 4]
        r5 += a[lo + i + 5]
        r6 += a[lo + i + 6]
        r7 += a[lo + i + 7]
        i += 8
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < n:
        res += a[lo + i]
        i += 1
    return float(res)


@njit(cache=True, error_model="numpy")
def pairwise_sum(a: npt.NDArray[np.float64], lo: int, n: int) -> float:  # pragma: no cover (compiled)
    """Sum of a[lo:lo+n] as numpy's float64 `add.reduce` computes it: above 128 values, the sum of
    the halves (the first a multiple of 8 long). Its recursion unrolled onto a stack (numba's
    on-disk cache cannot hold a recursive function)."""
    if n <= _PW_BLOCKSIZE:
        return _block_sum(a, lo, n)
    f_lo = np.empty(64, np.int64)
    f_n = np.empty(64, np.int64)
    f_phase = np.empty(64, np.int64)
    vals = np.empty(64, np.float64)
    sp, vp = 1, 0
    f_lo[0], f_n[0], f_phase[0] = lo, n, 0
    while sp > 0:
        top = sp - 1
        cl, cn = f_lo[top], f_n[top]
        if cn <= _PW_BLOCKSIZE:
            sp -= 1
            vals[vp] = _block_sum(a, cl, cn)
            vp += 1
            continue
        n2 = cn // 2
        n2 -= n2 % 8
        if f_phase[top] == 0:
            f_phase[top] = 1
            f_lo[sp], f_n[sp], f_phase[sp] = cl, n2, 0
            sp += 1
        elif f_phase[top] == 1:
            f_phase[top] = 2
            f_lo[sp], f_n[sp], f_phase[sp] = cl + n2, cn - n2, 0
            sp += 1
        else:
            sp -= 1
            vp -= 1
            vals[vp - 1] = vals[vp - 1] + vals[vp]
    return float(vals[0])


@njit(cache=True, error_model="numpy")
def reduce_sum(a: npt.NDArray[np.float64], n: int) -> float:  # pragma: no cover (compiled)
    """`a[:n].sum()`: 0.0 plus the pairwise sum of all n (numpy adds into its identity)."""
    return 0.0 + pairwise_sum(a, 0, n)
