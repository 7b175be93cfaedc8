"""JSON Schema files generated from the event models: ``schemas/<type>.v<N>.schema.json``.

python -m interaction_store.schemas            # write them (make schemas)
python -m interaction_store.schemas --check    # exit 1 if the files differ from the models
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import orjson

from interaction_store.events import CATALOGUE, schema_version_of

__all__ = ["render_schemas", "write_schemas"]

DEFAULT_DIR = Path(__file__).resolve().parent.parent / "schemas"


def render_schemas() -> dict[str, bytes]:
    """Every event type's schema, by file name, as the bytes to store."""
    files = {}
    for event_type, model in sorted(CATALOGUE.items()):
        version = schema_version_of(model)
        schema = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"{event_type}.v{version}.schema.json",
            **model.model_json_schema(),
        }
        files[f"{event_type}.v{version}.schema.json"] = (
            orjson.dumps(schema, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"
        )
    return files


def write_schemas(folder: Path = DEFAULT_DIR) -> list[str]:
    """Write the schema files; return the names that changed."""
    folder.mkdir(parents=True, exist_ok=True)
    changed = []
    for name, content in render_schemas().items():
        path = folder / name
        if not path.exists() or path.read_bytes() != content:
            path.write_bytes(content)
            changed.append(name)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 on a difference")
    parser.add_argument("folder", nargs="?", type=Path, default=DEFAULT_DIR)
    args = parser.parse_args(argv)
    if args.check:
        expected = render_schemas()
        present = {p.name: p.read_bytes() for p in args.folder.glob("*.schema.json")}
        stale = sorted(
            n for n in expected.keys() | present.keys() if expected.get(n) != present.get(n)
        )
        for name in stale:
            print(f"out of date: {args.folder / name}", file=sys.stderr)
        return 1 if stale else 0
    for name in write_schemas(args.folder):
        print(f"wrote {args.folder / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
