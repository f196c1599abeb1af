"""What the scan keeps per file: ``Source`` (a file to read) and ``FileState`` (its tally).

Apart from the engine because the engine's parts (the slow path, the accepted-row checks)
and its readers (the verdict, the mapping writer) all hold these, and none may import the
engine itself without a circle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tunestep.tools.inspector.spec import MappingSpec


@dataclass
class Source:
    shown: str  # workspace-relative path, or hf://datasets/<id>
    path: Path | None
    container: str
    sha256: str | None = None
    hub: tuple[str, str] | None = None  # (dataset id, split)
    map_spec: MappingSpec | None = None  # mode "map": the spec for this file


@dataclass
class FileState:
    index: int
    source: Source
    rows: int = 0
    accepted: int = 0
    changed: int = 0
    rows_with_errors: int = 0
    rescued: int = 0  # rejected rows the repair mapping would keep
    blocked: bool = False  # a file-level error no mapping can fix
    first_lines: dict[str, int] = field(default_factory=dict)
    specs: dict[str, MappingSpec | None] = field(default_factory=dict)
    raw_roles: set = field(default_factory=set)
    fields_seen: set = field(default_factory=set)
    drop_reasons: dict[str, int] = field(default_factory=dict)
    error_reasons: dict[str, int] = field(default_factory=dict)

