"""The Merkle tree against RFC 6962's definition, its published test vectors, and every
proof checked both ways (a true one holds, any altered one does not)."""

from __future__ import annotations

import hashlib

from hypothesis import given
from hypothesis import strategies as st

from interaction_store.audit.merkle import (
    EMPTY_ROOT,
    Frontier,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root_of,
    verify_consistency,
    verify_inclusion,
)

#: The leaves of the Certificate Transparency test vectors.
VECTORS = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    b"\x50\x51\x52\x53\x54\x55\x56\x57",
    b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
]


def mth(leaves: list[bytes]) -> bytes:
    """RFC 6962 section 2.1, word for word."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return node_hash(mth(leaves[:k]), mth(leaves[k:]))


def test_the_published_roots() -> None:
    leaves = [leaf_hash(v) for v in VECTORS]
    assert root_of([]) == EMPTY_ROOT
    assert root_of(leaves[:1]).hex() == (
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
    )
    assert root_of(leaves).hex() == (
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"
    )


def _leaves(n: int) -> list[bytes]:
    return [leaf_hash(i.to_bytes(4, "big")) for i in range(n)]


@given(st.integers(0, 300))
def test_the_frontier_gives_the_rfc_root_and_survives_storage(n: int) -> None:
    leaves = _leaves(n)
    frontier = Frontier()
    frontier.extend(leaves)
    assert frontier.root() == mth(leaves)
    stored = Frontier.from_hashes(frontier.size, frontier.hashes())
    stored.append(leaf_hash(b"next"))
    assert stored.root() == mth([*leaves, leaf_hash(b"next")])


@given(st.integers(1, 200).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n - 1))))
def test_every_inclusion_proof_holds_and_no_altered_one_does(case: tuple[int, int]) -> None:
    n, index = case
    leaves = _leaves(n)
    root = mth(leaves)
    proof = inclusion_proof(index, leaves)
    assert verify_inclusion(leaves[index], index, n, proof, root)
    assert not verify_inclusion(leaf_hash(b"other"), index, n, proof, root)
    if n > 1:
        assert not verify_inclusion(leaves[index], (index + 1) % n, n, proof, root)
    for i in range(len(proof)):
        bent = [*proof[:i], leaf_hash(b"bent"), *proof[i + 1 :]]
        assert not verify_inclusion(leaves[index], index, n, bent, root)


@given(st.integers(1, 200).flatmap(lambda n: st.tuples(st.integers(1, n), st.just(n))))
def test_every_consistency_proof_holds_and_no_altered_one_does(case: tuple[int, int]) -> None:
    old, new = case
    leaves = _leaves(new)
    old_root, new_root = mth(leaves[:old]), mth(leaves)
    proof = consistency_proof(old, leaves)
    assert verify_consistency(old, old_root, new, new_root, proof)
    assert not verify_consistency(old, leaf_hash(b"forged"), new, new_root, proof)
    assert verify_consistency(0, EMPTY_ROOT, new, new_root, [])
    assert not verify_consistency(0, leaf_hash(b"forged"), new, new_root, [])
    if old < new:
        assert not verify_consistency(old, old_root, new, leaf_hash(b"forged"), proof)
        rewritten = [*leaves[: old - 1], leaf_hash(b"rewritten"), *leaves[old:]]
        assert not verify_consistency(old, old_root, new, mth(rewritten), proof)


def test_an_events_leaf_covers_its_position_as_well_as_its_hash() -> None:
    from interaction_store.audit.merkle import event_leaf

    digest = hashlib.sha256(b"event").digest()
    assert event_leaf(7, digest) == leaf_hash((7).to_bytes(8, "big") + digest)
    assert event_leaf(7, digest) != event_leaf(8, digest)
    assert event_leaf(7, digest) != event_leaf(7, hashlib.sha256(b"other").digest())
