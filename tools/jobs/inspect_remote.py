# /// script
# requires-python = ">=3.11"
# dependencies = [
#     "pydantic>=2.7,<3",
#     "orjson>=3.10,<4",
#     "pyyaml>=6,<7",
#     "pyarrow>=17",
#     "numpy",
#     "huggingface_hub>=1.0,<3",
# ]
# ///
"""The remote inspector: tunestep's run_inspector, from the approved wheel, on the approved files.

Runs on Hugging Face Jobs (cpu-basic) as ``uv run <mount>/inspect_remote.py --config
<mount>/job.json --root /tmp/tunestep``. The bundle, mounted read-only at an exact commit,
holds this script, ``job.json``, a wheel of tunestep (built at draft time; its sha256 is in
the approved draft) and ``workspace/``: a mini workspace with the plan and every data file
the inspection reads (the inspected files, the hold-out set, the base train set, earlier
batches), each at its workspace path.

The dependencies above are the inspector's own (no torch, no trl): the wheel is unpacked
onto ``sys.path`` instead of being installed with its full dependency list, which a
cpu-basic job would spend minutes downloading for nothing. Token counting is not done
remotely.

Steps: check every file's sha256 against the config (and the wheel's), copy the mini
workspace to the writable root (the inspector writes its cache into the workspace's
ledger), unpack the wheel, run the inspector, write ``result.json`` (the full
InspectionReport as JSON) and, when ``TUNESTEP_OUTPUT_REPO``/``TUNESTEP_OUTPUT_PATH`` are
set (the hf-jobs backend sets them), commit it to ``<repo>/<path>/result.json`` with the
``HF_TOKEN`` secret. Exit 0 whatever the verdict: an INVALID batch is a result, not a
failure. Exit 2 for a bad config, 3 for a file whose hash differs.

Config (``job.json``)::

    schema      1
    kind        "inspect"
    draft_id    str
    step        int
    batch       str
    path        str   workspace path to inspect (a batch folder or its mapped folder)
    workspace   str   the mini workspace's folder in the bundle ("workspace")
    wheel       {"name", "sha256"}   tunestep's wheel in the bundle
    files       [{"path", "sha256"}]  every file of the mini workspace (workspace paths)
    max_errors  int
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import zipfile
from pathlib import Path, PurePosixPath

RESULT_PREFIX = "TUNESTEP_RESULT "
KEYS = {"schema", "kind", "draft_id", "step", "batch", "path", "workspace", "wheel", "files",
        "max_errors"}


def log(message: str) -> None:
    print(f"[inspect_remote] {message}", flush=True)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def safe_relative(text: str) -> PurePosixPath:
    pure = PurePosixPath(text)
    if not text or pure.is_absolute() or any(p in ("", ".", "..") for p in text.split("/")):
        raise ValueError(f"unsafe path {text!r}")
    return pure


def load_config(path: Path) -> dict:
    cfg = json.loads(path.read_text(encoding="utf-8"))
    if set(cfg) != KEYS or cfg["schema"] != 1 or cfg["kind"] != "inspect":
        raise ValueError(f"not an inspect job config: keys {sorted(cfg)}")
    for entry in cfg["files"]:
        safe_relative(entry["path"])
    safe_relative(cfg["wheel"]["name"])
    safe_relative(cfg["path"])
    return cfg


def verify(mount: Path, cfg: dict) -> list[str]:
    """Names whose bytes differ from the approved sha256 (empty: all as approved)."""
    bad = []
    wheel = mount / cfg["wheel"]["name"]
    if not wheel.is_file() or sha256_file(wheel) != cfg["wheel"]["sha256"]:
        bad.append(cfg["wheel"]["name"])
    base = mount / cfg["workspace"]
    for entry in cfg["files"]:
        path = base / entry["path"]
        if not path.is_file() or sha256_file(path) != entry["sha256"]:
            bad.append(entry["path"])
    return bad


def unpack_wheel(wheel: Path, lib: Path) -> None:
    """A pure-Python wheel unpacked onto a folder is importable from it."""
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            safe_relative(name.rstrip("/"))
        archive.extractall(lib)


def push_result(result_file: Path) -> dict | None:
    repo_id = os.environ.get("TUNESTEP_OUTPUT_REPO")
    prefix = (os.environ.get("TUNESTEP_OUTPUT_PATH") or "").strip("/")
    if not repo_id or not prefix:
        return None
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(token=os.environ.get("HF_TOKEN") or None)  # read only here; never logged
    info = api.create_commit(
        repo_id, repo_type="dataset", commit_message=f"tunestep inspection {prefix}",
        operations=[CommitOperationAdd(f"{prefix}/result.json", result_file.read_bytes())])
    log(f"pushed result.json to {repo_id}/{prefix} at {info.oid}")
    return {"repo_id": repo_id, "path": prefix, "revision": info.oid}


def run(config: Path, root: Path) -> int:
    try:
        cfg = load_config(config)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log(f"bad config: {exc}")
        return 2
    mount = config.parent
    bad = verify(mount, cfg)
    if bad:
        log(f"files differ from the approved draft: {', '.join(bad)}")
        return 3
    root.mkdir(parents=True, exist_ok=True)
    work, lib = root / "workspace", root / "lib"
    shutil.copytree(mount / cfg["workspace"], work, dirs_exist_ok=True)
    unpack_wheel(mount / cfg["wheel"]["name"], lib)
    sys.path.insert(0, str(lib))  # before any installed tunestep: the approved code runs
    import tunestep.tools as code
    from tunestep.tools.core.workspace import open_workspace
    from tunestep.tools.inspector import run_inspector

    log(f"tunestep from {Path(code.__file__).parent}; inspecting {cfg['path']}")
    report = run_inspector(open_workspace(work), cfg["path"], max_errors=cfg["max_errors"])
    result_file = root / "result.json"
    result_file.write_text(report.model_dump_json(indent=2), encoding="utf-8")
    log(report.summary)
    pushed = push_result(result_file)
    print(RESULT_PREFIX + json.dumps({"kind": "inspect", "status": report.status,
                                      "summary": report.summary, "pushed": pushed}), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--root", type=Path, default=Path("/tmp/tunestep"))
    parser.add_argument("--config-sha256", default=None,
                        help="sha256 of job.json's bytes: refuse to run when they differ")
    args = parser.parse_args(argv)
    if args.config_sha256 is not None:
        import hashlib

        actual = hashlib.sha256(args.config.read_bytes()).hexdigest()
        if actual != args.config_sha256.lower():
            print(f"inspect_remote: error: config_tampered: job.json hashes to {actual[:12]}, "
                  "not the digest it was started with", file=sys.stderr, flush=True)
            return 2
    return run(args.config.resolve(), args.root.resolve())


if __name__ == "__main__":
    sys.exit(main())
