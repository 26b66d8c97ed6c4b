"""The published contract: checked-in JSON Schemas match the pydantic models."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import pytest

from streams.records import json_schemas

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
RECORDS = ROOT / "streams" / "records.py"
REGENERATE = "the models changed: run `python scripts/gen_schema.py` and commit docs/*-schema.json"


@pytest.mark.parametrize("name", sorted(json_schemas()))
def test_checked_in_schema_matches_the_models(name: str) -> None:
    checked_in = json.loads((DOCS / name).read_text(encoding="utf-8"))

    assert checked_in == json_schemas()[name], REGENERATE


def test_every_schema_file_in_docs_is_generated() -> None:
    assert {path.name for path in DOCS.glob("*-schema.json")} == set(json_schemas())


def variants(schema: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The event schema's variants by `mode`."""
    mapping = schema["discriminator"]["mapping"]
    return {mode: schema["$defs"][ref.rsplit("/", 1)[1]] for mode, ref in mapping.items()}


def test_every_event_variant_requires_the_public_minimum_fields() -> None:
    events = variants(json_schemas()["event-schema.json"])

    assert set(events) == {"full", "thin"}
    for variant in events.values():
        assert {"tenant", "control_id", "message_type", "idempotency_key", "ref"} <= set(
            variant["required"]
        )
        assert variant["additionalProperties"] is False


def test_thin_events_have_no_phi_section() -> None:
    events = variants(json_schemas()["event-schema.json"])

    phi_sections = {"patient", "visit", "orders", "observations"}
    assert phi_sections <= set(events["full"]["properties"])
    assert phi_sections.isdisjoint(events["thin"]["properties"])


def test_dlq_record_requires_the_public_minimum_fields() -> None:
    dlq = json_schemas()["dlq-schema.json"]

    assert {"tenant", "control_id", "reason", "ref"} <= set(dlq["required"])


def class_names(path: Path) -> set[str]:
    return {
        node.name
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.ClassDef)
    }


def test_each_record_class_is_defined_once() -> None:
    """The contract's records live in streams/records.py only; everyone else imports them."""
    records = class_names(RECORDS) - {"_Record"}
    elsewhere = {
        f"{path.relative_to(ROOT)}: {name}"
        for folder in ("streams", "agents")
        for path in sorted((ROOT / folder).rglob("*.py"))
        if path != RECORDS
        for name in class_names(path) & records
    }
    assert not elsewhere, "records defined twice"
