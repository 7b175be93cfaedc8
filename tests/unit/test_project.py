"""The package's public surface and generated files stay what they claim to be."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Sequence

import interaction_store
from interaction_store.schemas import DEFAULT_DIR, render_schemas


def test_schema_files_match_the_models() -> None:
    """Run `make schemas` when this fails after changing a model."""
    expected = render_schemas()
    present = {p.name: p.read_bytes() for p in DEFAULT_DIR.glob("*.schema.json")}
    assert sorted(present) == sorted(expected)
    stale = [name for name in expected if present[name] != expected[name]]
    assert not stale, f"out of date: {stale}; run `make schemas`"


def isort_sorted(names: Sequence[str]) -> list[str]:
    """Constants first, then classes, then the rest (ruff's RUF022 order)."""
    return sorted(names, key=lambda n: (0 if n.isupper() else 1 if n[:1].isupper() else 2, n))


def test_every_module_declares_a_sorted_all_of_names_it_has() -> None:
    for info in pkgutil.walk_packages(interaction_store.__path__, "interaction_store."):
        module = importlib.import_module(info.name)
        names = getattr(module, "__all__", None)
        assert names is not None, f"{info.name} has no __all__"
        assert list(names) == isort_sorted(names), f"{info.name}.__all__ is not sorted"
        missing = [name for name in names if not hasattr(module, name)]
        assert not missing, f"{info.name}.__all__ names missing {missing}"


def test_the_package_re_exports_its_public_names() -> None:
    assert interaction_store.__all__ == isort_sorted(interaction_store.__all__)
    for name in interaction_store.__all__:
        assert getattr(interaction_store, name) is not None
