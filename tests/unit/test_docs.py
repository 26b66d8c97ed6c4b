"""The docs and the settings agree: every setting is documented in the README, and every
`LANEWAY_*` name the README, docker-compose.yml or docs/ mention is a real setting."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from streams.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCUMENTS = [README, ROOT / "docker-compose.yml", *sorted((ROOT / "docs").glob("*.md"))]
SETTINGS = {f"LANEWAY_{field.upper()}" for field in Settings.model_fields}


@pytest.mark.parametrize("field", sorted(Settings.model_fields))
def test_every_setting_is_in_the_readme(field: str) -> None:
    variable = f"LANEWAY_{field.upper()}"
    assert f"`{variable}`" in README.read_text(encoding="utf-8"), f"{variable} not in README.md"


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.name)
def test_every_setting_named_in_the_docs_exists(document: Path) -> None:
    named = set(re.findall(r"LANEWAY_[A-Z0-9_]*[A-Z0-9]", document.read_text(encoding="utf-8")))
    assert not named - SETTINGS, f"{document.name} names settings that do not exist"
