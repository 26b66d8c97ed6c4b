"""Write the JSON Schemas of Laneway's records to docs/: `python scripts/gen_schema.py`.

The pydantic models in `streams/records.py` are the contract; the checked-in schemas are their
published form, and `tests/unit/test_schema.py` fails when the two drift apart.
"""

from __future__ import annotations

import json
from pathlib import Path

from streams.records import json_schemas

DOCS = Path(__file__).resolve().parents[1] / "docs"


def render(schema: dict[str, object]) -> str:
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def main() -> None:
    for name, schema in json_schemas().items():
        (DOCS / name).write_text(render(schema), encoding="utf-8")
        print(f"wrote docs/{name}")


if __name__ == "__main__":
    main()
