"""A wheel of tunestep itself, built from the code this process runs, reproducibly.

A remote job that runs tunestep code (the remote inspector) must run exactly the bytes the
operator approved, so the draft carries the wheel's sha256 and the bundle carries the
wheel. The wheel is written here with ``zipfile`` rather than ``pip wheel``: it works the
same from a source checkout, an editable install or an installed wheel, needs neither pip
nor the network, and is byte-for-byte a function of its inputs (entries sorted, fixed
timestamps and modes), so drafting twice gives the same digest.

Inputs: every file of the ``tunestep.server``, ``tunestep.tools`` and ``tunestep.prompts``
packages (``.py`` plus the package data: ``.jinja`` templates and ``.md`` prompts) and the
installed distribution's metadata (version, dependencies). The wheel is cached under
``.tunestep/bundles/<source hash>/``: the same sources give the same file, without a build.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import io
import os
import zipfile
from pathlib import Path

from tunestep.tools.core.atomic import atomic_write_bytes
from tunestep.tools.core.errors import TunestepError
from tunestep.tools.core.hashing import sha256_json
from tunestep.tools.core.workspace import Workspace

PACKAGES = ("tunestep.server", "tunestep.tools", "tunestep.prompts")
SUFFIXES = (".py", ".jinja", ".md")
DIST = "tunestep"
ZIP_DATE = (1980, 1, 1, 0, 0, 0)
BUNDLES_DIR = "bundles"


def source_files() -> list[tuple[str, bytes]]:
    """(name in the wheel, bytes) of every package file, sorted by name."""
    found: dict[str, bytes] = {}
    for package in PACKAGES:
        spec = importlib.util.find_spec(package)
        locations = list(spec.submodule_search_locations or []) if spec else []
        if not locations:
            raise TunestepError("wheel_sources_missing",
                                f"cannot find the source of {package} to build the job's wheel")
        base = Path(locations[0])
        prefix = package.replace(".", "/")
        for folder, dirs, files in os.walk(base):
            dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__pycache__")))
            here = Path(folder)
            if not (here / "__init__.py").is_file():
                dirs[:] = []  # not a package: nothing of it is installed
                continue
            for name in files:
                if name.startswith(".") or not name.endswith(SUFFIXES):
                    continue
                rel = (here / name).relative_to(base).as_posix()
                found[f"{prefix}/{rel}"] = (here / name).read_bytes()
    return sorted(found.items())


def _metadata() -> tuple[str, str]:
    """(version, METADATA text) of the installed tunestep distribution."""
    from importlib.metadata import PackageNotFoundError, metadata

    try:
        meta = metadata(DIST)
    except PackageNotFoundError:
        raise TunestepError("wheel_sources_missing", "tunestep is not installed as a "
                            "distribution: install it (pip install -e .) to draft remote "
                            "inspections") from None
    version = meta["Version"]
    lines = ["Metadata-Version: 2.1", f"Name: {DIST}", f"Version: {version}"]
    if meta["Summary"]:
        lines.append(f"Summary: {meta['Summary']}")
    if meta["Requires-Python"]:
        lines.append(f"Requires-Python: {meta['Requires-Python']}")
    lines += [f"Requires-Dist: {req}" for req in meta.get_all("Requires-Dist") or []]
    return version, "\n".join(lines) + "\n"


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return f"sha256={digest.decode()}"


def wheel_bytes(files: list[tuple[str, bytes]], version: str, metadata: str) -> bytes:
    """The wheel: the files, then dist-info (METADATA, WHEEL, entry points, RECORD)."""
    info = f"{DIST}-{version}.dist-info"
    members = [
        *files,
        (f"{info}/METADATA", metadata.encode()),
        (f"{info}/WHEEL", b"Wheel-Version: 1.0\nGenerator: tunestep-selfwheel\n"
                          b"Root-Is-Purelib: true\nTag: py3-none-any\n"),
        (f"{info}/entry_points.txt",
         b"[console_scripts]\ntunestep = tunestep.server.cli:main\n"),
    ]
    record = "".join(f"{name},{_record_hash(data)},{len(data)}\n" for name, data in members)
    members.append((f"{info}/RECORD", (record + f"{info}/RECORD,,\n").encode()))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members:
            entry = zipfile.ZipInfo(name, date_time=ZIP_DATE)
            entry.external_attr = 0o644 << 16
            entry.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(entry, data, compresslevel=9)
    return buffer.getvalue()


def build_self_wheel(ws: Workspace) -> Path:
    """tunestep's wheel for the code running now, cached by the hash of its sources."""
    files = source_files()
    version, metadata = _metadata()
    key = sha256_json({"files": [[name, hashlib.sha256(data).hexdigest()]
                                 for name, data in files], "metadata": metadata})
    target = ws.state_dir / BUNDLES_DIR / key[:16] / f"{DIST}-{version}-py3-none-any.whl"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(target, wheel_bytes(files, version, metadata))
    return target
