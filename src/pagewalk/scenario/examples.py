"""The example scenarios shipped inside the package (src/pagewalk/examples/*.yaml)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import yaml


def _directory() -> Path:
    return Path(str(resources.files("pagewalk") / "examples"))


def example_path(name: str) -> Path | None:
    path = _directory() / f"{name}.yaml"
    return path if path.is_file() else None


def list_examples() -> list[tuple[str, str]]:
    rows = []
    for path in sorted(_directory().glob("*.yaml")):
        try:
            doc = yaml.safe_load(path.read_text())
            description = str(doc.get("description", "")) if isinstance(doc, dict) else ""
        except yaml.YAMLError:
            description = ""
        rows.append((path.stem, " ".join(description.split())))
    return rows
