"""The README documents every setting an operator can set."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.mark.parametrize("field", sorted(Settings.model_fields))
def test_every_setting_is_in_the_readme(field: str) -> None:
    variable = f"LANEWAY_{field.upper()}"
    assert f"`{variable}`" in README.read_text(encoding="utf-8"), f"{variable} not in README.md"
