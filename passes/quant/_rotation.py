"""Orthonormal channel rotations for ``smooth{rotate=...}``, kept as two Kronecker factors.

A rotation R of order K is stored as ``R = A ⊗ B`` (A of order m, B of order p,
m·p = K), which is how the graph applies it: with x viewed as [..., m, p],
``x R = A^T · x · B`` (two small MatMuls instead of one K×K MatMul, O(K·(m+p)) per
token rather than O(K²)), and how the weights absorb it offline (``R^T W``).

* ``hadamard``: Sylvester's 2^j times, where K is not a power of two, a Paley
  core of order c (QuaRot's approach: Hadamard matrices exist for the orders real
  widths have, 384 = 12·32, 1152 = 36·32, 4608 = 36·128). Paley I gives q + 1 for a
  prime q ≡ 3 (mod 4), Paley II 2(q + 1) for a prime q ≡ 1 (mod 4); prime powers
  (GF(p^k)) are not built, so a width whose only cores need them has no Hadamard
  rotation here and ``hadamard_factors`` returns None; so does a width whose smallest
  core is above ``MAX_CORE``.
* ``random``: a seeded random orthogonal rotation, A and B from the QR of Gaussian
  matrices; it exists for every width.

Invariant: every factor returned is orthonormal (checked on construction), so
``x R R^T = x`` up to float rounding and a rotated model computes the same function.
"""

from __future__ import annotations

import numpy as np


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, int(n**0.5) + 1))


def _sylvester(n: int) -> np.ndarray:
    h = np.ones((1, 1))
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h


def _jacobsthal(q: int) -> np.ndarray:
    """Q[i, j] = χ(j - i) over GF(q), q prime (χ: Legendre symbol, χ(0) = 0)."""
    residues = {(x * x) % q for x in range(1, q)}
    chi = np.array([0] + [1 if a in residues else -1 for a in range(1, q)])
    idx = (np.arange(q)[None, :] - np.arange(q)[:, None]) % q
    return chi[idx]


def _paley(order: int) -> np.ndarray | None:
    """A ±1 Hadamard matrix of ``order`` by Paley's constructions over a prime field, or None."""
    q = order - 1
    if _is_prime(q) and q % 4 == 3:
        c = np.zeros((order, order))
        c[0, 1:], c[1:, 0], c[1:, 1:] = 1, -1, _jacobsthal(q)
        return np.eye(order) + c
    q = order // 2 - 1
    if order % 2 == 0 and _is_prime(q) and q % 4 == 1:
        c = np.zeros((q + 1, q + 1))
        c[0, 1:], c[1:, 0], c[1:, 1:] = 1, 1, _jacobsthal(q)
        zero, one = np.array([[1, -1], [-1, -1]]), np.array([[1, 1], [1, -1]])
        return np.block([[zero if v == 0 else v * one for v in row] for row in c])
    return None


MAX_CORE = 256


def _core(k: int) -> tuple[np.ndarray, int] | None:
    """(±1 core of order c, 2^j) with c · 2^j = k and the smallest c that can be built.

    Cores above MAX_CORE are not used: the online rotation's cost grows with the core
    (K·(m + p) per token) and would rival the GEMM it precedes."""
    two = 1
    while k % (two * 2) == 0:
        two *= 2
    j = two
    while j >= 1:
        c = k // j
        if c > MAX_CORE:
            break
        core = np.ones((1, 1)) if c == 1 else _paley(c)
        if core is not None:
            return core, j
        j //= 2
    return None


def _split(core: np.ndarray, two: int) -> tuple[np.ndarray, np.ndarray]:
    """Orthonormal (A, B), A = core ⊗ H(2^u), B = H(2^v), with m = |A| closest to √K."""
    k = core.shape[0] * two
    u = 1
    while u < two and core.shape[0] * u * 2 <= np.sqrt(k):
        u *= 2
    a = np.kron(core, _sylvester(u))
    b = _sylvester(two // u)
    return _orthonormal(a / np.sqrt(a.shape[0])), _orthonormal(b / np.sqrt(b.shape[0]))


def _orthonormal(m: np.ndarray) -> np.ndarray:
    if not np.allclose(m @ m.T, np.eye(m.shape[0]), atol=1e-9):
        raise AssertionError(f"rotation factor of order {m.shape[0]} is not orthonormal")
    return m.astype(np.float32)


def hadamard_factors(k: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Orthonormal (A, B) with ``A ⊗ B`` a Hadamard matrix of order k, or None when none is built in."""
    if k < 2:
        return None
    found = _core(k)
    return None if found is None else _split(*found)


def random_factors(k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Orthonormal (A, B), A ⊗ B of order k, from a seeded Gaussian QR (m the divisor of k closest to √k)."""
    m = max(d for d in range(1, int(np.sqrt(k)) + 1) if k % d == 0)
    rng = np.random.default_rng(seed)

    def orth(n: int) -> np.ndarray:
        q, r = np.linalg.qr(rng.standard_normal((n, n)))
        return _orthonormal(q * np.sign(np.diag(r)))

    return orth(m), orth(k // m)


def full(factors: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """The K×K rotation ``A ⊗ B`` (tests and small widths)."""
    return np.kron(factors[0], factors[1])


def rotate_weight(factors: tuple[np.ndarray, np.ndarray], w_kn: np.ndarray) -> np.ndarray:
    """``R^T W`` for W of shape [K, N], without forming R: (A ⊗ B)^T W = Σ A[i,k] B[j,l] W[(i,j), n]."""
    a, b = (f.astype(np.float64) for f in factors)
    w = w_kn.astype(np.float64).reshape(a.shape[0], b.shape[0], -1)
    w = np.tensordot(b, w, axes=([0], [1]))  # [l, i, n]
    w = np.tensordot(a, w, axes=([0], [1]))  # [k, l, n]
    return w.reshape(w_kn.shape).astype(np.float32)
