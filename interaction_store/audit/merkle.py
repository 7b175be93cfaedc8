"""A Merkle tree over the log, hashed as RFC 6962 (Certificate Transparency) hashes it.

    leaf hash  = SHA-256(0x00 ‖ int64be(the event's position) ‖ its stored hash)
    node hash  = SHA-256(0x01 ‖ left ‖ right)
    empty tree = SHA-256("")

The tree of n leaves splits at k, the largest power of two below n: its left subtree is
the first k leaves, its right the rest. ``Frontier`` keeps only the roots of the perfect
subtrees a tree of n leaves is made of (one per bit set in n), so a sealer extends the
tree by each new leaf in O(log n) without reading the old ones. Inclusion and
consistency proofs, and their verification, follow RFC 9162 section 2.1.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

__all__ = [
    "EMPTY_ROOT",
    "Frontier",
    "consistency_proof",
    "event_leaf",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root_of",
    "verify_consistency",
    "verify_inclusion",
]

EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def event_leaf(position: int, event_hash: bytes) -> bytes:
    """The leaf of an event: its position and its hash, so neither can change unseen."""
    return leaf_hash(position.to_bytes(8, "big", signed=True) + event_hash)


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


@dataclass
class Frontier:
    """The roots of the perfect subtrees of a tree of ``size`` leaves, largest first."""

    size: int = 0
    #: (height, root) of each perfect subtree, left to right.
    nodes: list[tuple[int, bytes]] = field(default_factory=list)

    def append(self, leaf: bytes) -> None:
        """Add a leaf (its leaf hash)."""
        height, node = 0, leaf
        while self.nodes and self.nodes[-1][0] == height:
            _, left = self.nodes.pop()
            height, node = height + 1, node_hash(left, node)
        self.nodes.append((height, node))
        self.size += 1

    def extend(self, leaves: Iterable[bytes]) -> None:
        for leaf in leaves:
            self.append(leaf)

    def root(self) -> bytes:
        if not self.nodes:
            return EMPTY_ROOT
        root = self.nodes[-1][1]
        for _, left in reversed(self.nodes[:-1]):
            root = node_hash(left, root)
        return root

    def hashes(self) -> list[bytes]:
        """The subtree roots, to store; ``from_hashes`` reads them back."""
        return [node for _, node in self.nodes]

    @classmethod
    def from_hashes(cls, size: int, hashes: Sequence[bytes]) -> Frontier:
        heights = [bit for bit in range(size.bit_length() - 1, -1, -1) if size >> bit & 1]
        if len(heights) != len(hashes):
            raise ValueError(
                f"a tree of {size} leaves has {len(heights)} subtrees, not {len(hashes)}"
            )
        return cls(size, list(zip(heights, hashes, strict=True)))


def root_of(leaves: Sequence[bytes]) -> bytes:
    frontier = Frontier()
    frontier.extend(leaves)
    return frontier.root()


def _split(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def inclusion_proof(index: int, leaves: Sequence[bytes]) -> list[bytes]:
    """The audit path of leaf ``index`` in the tree of ``leaves`` (RFC 6962 PATH)."""
    if not 0 <= index < len(leaves):
        raise IndexError(f"leaf {index} is not in a tree of {len(leaves)}")
    proof: list[bytes] = []
    lo, hi = 0, len(leaves)
    stack: list[bytes] = []
    while hi - lo > 1:
        k = _split(hi - lo)
        if index - lo < k:
            stack.append(root_of(leaves[lo + k : hi]))
            hi = lo + k
        else:
            stack.append(root_of(leaves[lo : lo + k]))
            lo = lo + k
    proof.extend(reversed(stack))
    return proof


def consistency_proof(old_size: int, leaves: Sequence[bytes]) -> list[bytes]:
    """The proof that the tree of the first ``old_size`` leaves is a prefix of the tree of
    all ``leaves`` (RFC 6962 PROOF)."""
    if not 0 < old_size <= len(leaves):
        raise ValueError(f"no consistency proof from {old_size} to {len(leaves)} leaves")

    def subproof(m: int, lo: int, hi: int, whole: bool) -> list[bytes]:
        n = hi - lo
        if m == n:
            return [] if whole else [root_of(leaves[lo:hi])]
        k = _split(n)
        if m <= k:
            return [*subproof(m, lo, lo + k, whole), root_of(leaves[lo + k : hi])]
        return [*subproof(m - k, lo + k, hi, False), root_of(leaves[lo : lo + k])]

    return subproof(old_size, 0, len(leaves), True)


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> bool:
    """Whether ``leaf`` is leaf ``index`` of the tree of ``size`` leaves with ``root``."""
    if not 0 <= index < size:
        return False
    fn, sn, node = index, size - 1, leaf
    for sibling in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            node = node_hash(sibling, node)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            node = node_hash(node, sibling)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and node == root


def verify_consistency(
    old_size: int, old_root: bytes, new_size: int, new_root: bytes, proof: Sequence[bytes]
) -> bool:
    """Whether the tree (``new_size``, ``new_root``) extends (``old_size``, ``old_root``)."""
    if old_size == new_size:
        return not proof and old_root == new_root
    if old_size == 0:
        return not proof and old_root == EMPTY_ROOT
    if not 0 < old_size < new_size or not proof:
        return False
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # a power of two: the old root is a node of the new
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    first = second = path[0]
    for node in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            first, second = node_hash(node, first), node_hash(node, second)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            second = node_hash(second, node)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and first == old_root and second == new_root
