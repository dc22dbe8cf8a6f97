"""Merkle trees as RFC 9162 (Certificate Transparency v2, section 2.1) defines them.

    leaf hash   = H(0x00 || leaf bytes)
    node hash   = H(0x01 || left || right)
    MTH({})     = H(b"")
    MTH(D[n])   = node(MTH(D[0:k]), MTH(D[k:n])), k the largest power of two smaller than n

so that any RFC 9162 / RFC 6962 inclusion-proof verifier checks our paths. H is sha256 by
default (blake3 when asked and installed). `Streaming` computes a root in O(log n) memory
while the leaves go by, which is how a file's root is computed in the same read pass as its
whole-file digest.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence

HashFn = Callable[[bytes], bytes]


def hasher(algorithm: str = "sha256") -> Callable[[], object]:
    """A constructor of incremental hash objects (update/digest) for `algorithm`."""
    if algorithm == "sha256":
        return hashlib.sha256
    if algorithm == "blake3":
        try:
            import blake3  # optional: `pip install blake3`
        except ImportError:  # pragma: no cover - depends on the environment
            raise ValueError("hash algorithm blake3 needs the 'blake3' package (pip install blake3)") from None
        return blake3.blake3
    raise ValueError(f"unknown hash algorithm {algorithm!r} (sha256 or blake3)")


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _h(algorithm: str) -> HashFn:
    if algorithm == "sha256":
        return _sha256
    new = hasher(algorithm)

    def h(data: bytes) -> bytes:
        x = new()
        x.update(data)  # type: ignore[attr-defined]
        return x.digest()  # type: ignore[attr-defined,no-any-return]
    return h


def leaf_hash(data: bytes, algorithm: str = "sha256") -> bytes:
    return _h(algorithm)(b"\x00" + data)


def node_hash(left: bytes, right: bytes, algorithm: str = "sha256") -> bytes:
    return _h(algorithm)(b"\x01" + left + right)


def empty_root(algorithm: str = "sha256") -> bytes:
    return _h(algorithm)(b"")


class Streaming:
    """Root of a tree whose leaf hashes arrive one by one (O(log n) memory)."""

    def __init__(self, algorithm: str = "sha256") -> None:
        self.algorithm = algorithm
        self._node = _h(algorithm)
        self._stack: list[tuple[int, bytes]] = []  # (leaves under it, hash); sizes strictly decreasing
        self.count = 0

    def add_hash(self, lh: bytes) -> None:
        size, h = 1, lh
        stack = self._stack
        while stack and stack[-1][0] == size:
            s, left = stack.pop()
            h = self._node(b"\x01" + left + h)
            size += s
        stack.append((size, h))
        self.count += 1

    def root(self) -> bytes:
        if not self._stack:
            return empty_root(self.algorithm)
        h = self._stack[-1][1]
        for _, left in reversed(self._stack[:-1]):
            h = self._node(b"\x01" + left + h)
        return h


def root_of_hashes(leaf_hashes: Iterable[bytes], algorithm: str = "sha256") -> bytes:
    """MTH over leaf hashes, level by level (the same tree as Streaming, fewer Python calls)."""
    level = list(leaf_hashes)
    if not level:
        return empty_root(algorithm)
    node = _h(algorithm)
    # RFC 9162's split at the largest power of two equals pairing left to right, level by level, with
    # an odd last node promoted unchanged
    while len(level) > 1:
        nxt = [node(b"\x01" + level[i] + level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def _split(n: int) -> int:
    k = 1
    while k << 1 < n:
        k <<= 1
    return k


def inclusion_path(leaf_hashes: Sequence[bytes], index: int, algorithm: str = "sha256") -> list[bytes]:
    """The audit path of leaf `index` (RFC 9162 2.1.3.1), nearest sibling first."""
    n = len(leaf_hashes)
    if not 0 <= index < n:
        raise IndexError(f"leaf {index} is not in a tree of {n} leaves")
    path: list[bytes] = []
    lo, hi, m = 0, n, index
    frames: list[tuple[int, int]] = []  # the sibling subtrees, farthest first
    while hi - lo > 1:
        k = _split(hi - lo)
        if m < k:
            frames.append((lo + k, hi))
            hi = lo + k
        else:
            frames.append((lo, lo + k))
            lo, m = lo + k, m - k
    for a, b in reversed(frames):
        path.append(root_of_hashes(leaf_hashes[a:b], algorithm))
    return path


def root_from_path(leaf_h: bytes, index: int, size: int, path: Sequence[bytes],
                   algorithm: str = "sha256") -> bytes | None:
    """The root that `path` leads to from leaf `index` of a `size`-leaf tree (RFC 9162 2.1.3.2);
    None when the path cannot belong to a tree of that size."""
    if not 0 <= index < size:
        return None
    node = _h(algorithm)
    fn, sn, r = index, size - 1, leaf_h
    for p in path:
        if sn == 0:
            return None
        if fn & 1 or fn == sn:
            r = node(b"\x01" + p + r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node(b"\x01" + r + p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        return None
    return r
