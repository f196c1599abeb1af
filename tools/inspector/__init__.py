"""run_inspector: every row checked, streamed; MappingSpec for foreign formats.

Public API (domain functions returning pydantic models; the MCP and CLI layers wrap them):

- ``run_inspector(ws, path, tokens=False, max_errors=100, progress=None) -> InspectionReport``
- ``MappingSpec`` (declarative mapping of a foreign format to canonical chat)
- ``apply_mapping`` / ``suggest_mapping`` live in ``tunestep.tools.data.mapping``.

May import: ``core``.
"""

from tunestep.tools.inspector.report import (
    INSPECTOR_VERSION,
    Duplicates,
    FileReport,
    Finding,
    InspectionReport,
    Leakage,
    MappingPreview,
    Percentiles,
    Stats,
    TokenStats,
)
from tunestep.tools.inspector.rules import RULES
from tunestep.tools.inspector.run import run_inspector
from tunestep.tools.inspector.spec import DropRule, MappingSpec

__all__ = [
    "INSPECTOR_VERSION",
    "RULES",
    "DropRule",
    "Duplicates",
    "FileReport",
    "Finding",
    "InspectionReport",
    "Leakage",
    "MappingPreview",
    "MappingSpec",
    "Percentiles",
    "Stats",
    "TokenStats",
    "run_inspector",
]
