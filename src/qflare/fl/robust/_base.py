"""What every rule shares: the result type, input checks and the chunked passes over ``d``.

An ``(n, d)`` float32 matrix at ``n = 100``, ``d = 10**6`` is 400 MB, so no rule makes a float64
copy of it: every pass walks the columns in blocks of :data:`BLOCK` (a few tens of MB in float64)
and accumulates in float64. Rows holding NaN or infinity are *invalid*: they are found in the
first pass, never enter any arithmetic, and are reported as not accepted.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

Float64Vector = npt.NDArray[np.float64]
Matrix = npt.NDArray[np.float32]
BoolVector = npt.NDArray[np.bool_]

BLOCK = 1 << 15
"""Columns per block: ``n * BLOCK * 8`` bytes of float64 at a time (26 MB at ``n = 100``)."""


@dataclass(frozen=True)
class RobustResult:
    """One robust aggregation.

    Attributes:
        mean: The aggregated delta (float64, length ``d``): what replaces the weighted mean.
        accepted: Which of the ``n`` rows contributed (all true for rules that use every row).
    """

    mean: Float64Vector
    accepted: BoolVector


class Defence(Protocol):
    """A robust aggregation rule."""

    name: str

    def aggregate(
        self,
        updates: Matrix,
        weights: Float64Vector,
        reference: Float64Vector | None = None,
    ) -> RobustResult:
        """Aggregate ``updates`` (``(n, d)``) with ``weights`` (``(n,)``), given ``reference``.

        ``reference`` is a trusted direction (the previous global update, or the server's own
        update on a root dataset); rules that need none ignore it.
        """
        ...


@dataclass(frozen=True)
class Round:
    """A checked round: the matrix, its weights and reference, and per-row statistics.

    Attributes:
        updates: The ``(n, d)`` float32 matrix (C-contiguous).
        weights: ``(n,)`` float64, finite and non-negative.
        reference: ``(d,)`` float64 or ``None``.
        valid: Rows without NaN or infinity.
        sq_norms: ``||x_i||^2`` in float64 (NaN or infinity for invalid rows).
        dots: ``<x_i, reference>`` in float64, or ``None`` without a reference.
    """

    updates: Matrix
    weights: Float64Vector
    reference: Float64Vector | None
    valid: BoolVector
    sq_norms: Float64Vector
    dots: Float64Vector | None

    @property
    def n(self) -> int:
        """Number of rows."""
        return int(self.updates.shape[0])

    @property
    def d(self) -> int:
        """Number of coordinates."""
        return int(self.updates.shape[1])

    @property
    def index(self) -> npt.NDArray[np.intp]:
        """Indices of the valid rows, ascending."""
        return np.flatnonzero(self.valid)

    @property
    def norms(self) -> Float64Vector:
        """``||x_i||`` in float64."""
        return np.sqrt(self.sq_norms)


def prepare(
    updates: Matrix, weights: Float64Vector, reference: Float64Vector | None = None
) -> Round:
    """Check the inputs and make the first pass (norms, dots with the reference, validity).

    Raises:
        ValueError: If ``updates`` is not a non-empty real ``(n, d)`` matrix, ``weights`` is not
            ``n`` finite non-negative numbers with a positive sum, or ``reference`` is not ``d``
            finite numbers. NaN or infinity *inside updates* is not an error: those rows are
            marked invalid.
    """
    matrix = as_matrix(updates)
    w = check_weights(weights, matrix.shape[0])
    ref = check_reference(reference, matrix.shape[1])
    sq, dots = row_stats(matrix, ref)
    return Round(matrix, w, ref, np.isfinite(sq), sq, dots)


def as_matrix(updates: Matrix) -> Matrix:
    """``updates`` as a C-contiguous float32 ``(n, d)`` matrix, ``n, d >= 1`` (no copy if so)."""
    arr = np.asarray(updates)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"updates must be a non-empty (n, d) matrix, got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"updates must be real numbers, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def check_weights(weights: Float64Vector, n: int) -> Float64Vector:
    """``weights`` as float64 ``(n,)``: finite, non-negative, positive sum."""
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n,):
        raise ValueError(f"weights must have shape ({n},) for {n} updates, got {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError("weights must be finite, non-negative and not all zero")
    return w


def check_reference(reference: Float64Vector | None, d: int) -> Float64Vector | None:
    """``reference`` as float64 ``(d,)`` with finite entries, or ``None``."""
    if reference is None:
        return None
    ref = np.asarray(reference, dtype=np.float64)
    if ref.shape != (d,):
        raise ValueError(f"reference must have shape ({d},) like the updates, got {ref.shape}")
    if not np.all(np.isfinite(ref)):
        raise ValueError("reference must be finite (it is trusted input)")
    return ref


def blocks(d: int) -> Iterator[slice]:
    """Column slices of at most :data:`BLOCK` covering ``range(d)``."""
    for start in range(0, d, BLOCK):
        yield slice(start, min(start + BLOCK, d))


def f64_blocks(
    updates: Matrix, rows: npt.NDArray[np.intp] | None = None
) -> Iterator[tuple[slice, npt.NDArray[np.float64]]]:
    """``(cols, rows x cols block in float64)`` over the columns, in one reused buffer.

    The yielded block is overwritten by the next one. Reusing one buffer instead of allocating a
    fresh block each time avoids a page fault per 4 KiB per block (tens of MB per block), which
    on a loaded two-core machine made a Gram pass several times slower.
    """
    index = None if rows is None or len(rows) == updates.shape[0] else rows
    m = updates.shape[0] if index is None else len(index)
    buf = np.empty((m, min(BLOCK, updates.shape[1])), dtype=np.float64)
    for cols in blocks(updates.shape[1]):
        b = buf[:, : cols.stop - cols.start]
        if index is None:
            b[...] = updates[:, cols]
        else:  # row by row: no temporary (rows x cols) copy
            for j, i in enumerate(index):
                b[j] = updates[i, cols]
        yield cols, b


def f32_columns(updates: Matrix, rows: npt.NDArray[np.intp]) -> Iterator[tuple[slice, Matrix]]:
    """``(cols, cols x rows block)``: each coordinate's values contiguous, in one reused buffer.

    The yielded block may be modified (partitioned) by the caller; it is overwritten next.
    """
    index = None if len(rows) == updates.shape[0] else rows
    buf = np.empty((min(BLOCK, updates.shape[1]), len(rows)), dtype=np.float32)
    for cols in blocks(updates.shape[1]):
        b = buf[: cols.stop - cols.start]
        if index is None:
            b[...] = updates[:, cols].T
        else:
            for j, i in enumerate(index):
                b[:, j] = updates[i, cols]
        yield cols, b


def row_stats(
    updates: Matrix, reference: Float64Vector | None
) -> tuple[Float64Vector, Float64Vector | None]:
    """``||x_i||^2`` and ``<x_i, reference>`` in float64, one pass over the columns.

    A float32 value squared cannot overflow float64 (``3.4e38 ** 2 * 2**31`` is finite), so a
    non-finite squared norm means exactly that the row holds NaN or infinity.
    """
    n = updates.shape[0]
    sq = np.zeros(n, dtype=np.float64)
    dots = None if reference is None else np.zeros(n, dtype=np.float64)
    for cols, b in f64_blocks(updates):
        sq += np.einsum("ij,ij->i", b, b)
        if dots is not None and reference is not None:
            dots += b @ reference[cols]
    return sq, dots


def weighted_sum(updates: Matrix, coef: Float64Vector, rows: npt.NDArray[np.intp]) -> Float64Vector:
    """``sum_{i in rows} coef[i] * x_i`` in float64 (rows outside ``rows`` are never read)."""
    c = coef[rows]
    out = np.empty(updates.shape[1], dtype=np.float64)
    for cols, b in f64_blocks(updates, rows):
        out[cols] = c @ b
    return out


def weighted_mean(updates: Matrix, weights: Float64Vector, accepted: BoolVector) -> RobustResult:
    """The ``weights``-weighted mean of the ``accepted`` rows.

    If no accepted row has positive weight the mean is undefined; then the result is the
    documented *nothing accepted* outcome, :func:`nothing_accepted`.
    """
    rows = np.flatnonzero(accepted)
    total = float(weights[rows].sum())
    if total <= 0:
        return nothing_accepted(updates.shape[0], updates.shape[1])
    return RobustResult(weighted_sum(updates, weights / total, rows), accepted.copy())


def nothing_accepted(n: int, d: int) -> RobustResult:
    """Every row refused: a zero mean and an all-false ``accepted``.

    :class:`~qflare.fl.robust.RobustAggregator` turns this into an empty
    :class:`~qflare.fl.strategy.AggregateResult`, which every strategy treats as "leave the model
    unchanged".
    """
    return RobustResult(np.zeros(d, dtype=np.float64), np.zeros(n, dtype=np.bool_))


def coordinate_median(updates: Matrix, rows: npt.NDArray[np.intp]) -> Float64Vector:
    """The median of each coordinate over ``rows`` (the mean of the middle two for even counts).

    Each column block is transposed to ``(cols, m)`` so that every coordinate's values are
    contiguous, and one ``np.partition`` per block selects the upper middle; for an even count
    the lower middle is the maximum of the part below it. Selection is exact in float32.
    """
    m = len(rows)
    half = m // 2
    out = np.empty(updates.shape[1], dtype=np.float64)
    for cols, b in f32_columns(updates, rows):
        b.partition(half, axis=1)
        upper = b[:, half].astype(np.float64)
        if m % 2:
            out[cols] = upper
        else:
            out[cols] = 0.5 * (b[:, :half].max(axis=1).astype(np.float64) + upper)
    return out


def cosines(dots: Float64Vector, norms: Float64Vector, ref_norm: float) -> Float64Vector:
    """``dots / (norms * ref_norm)``, with 0 wherever either norm is 0 (no direction).

    Invalid rows (non-finite norm or dot) also get 0; callers refuse them anyway.
    """
    denom = norms * ref_norm
    out = np.zeros_like(dots)
    np.divide(dots, denom, out=out, where=(denom > 0) & np.isfinite(denom) & np.isfinite(dots))
    return np.clip(out, -1.0, 1.0)


def count_param(name: str, value: float | None) -> int | None:
    """A non-negative whole-number parameter (``2`` or ``2.0``), or ``None``."""
    if value is None:
        return None
    if isinstance(value, bool) or not float(value).is_integer() or value < 0:
        raise ValueError(f"{name} must be a non-negative whole number, got {value!r}")
    return int(value)
