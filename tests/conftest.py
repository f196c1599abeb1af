"""Shared fixtures: sample workspaces, a tiny model, and a recognizable fake token."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hub_stub import fake_hub  # noqa: F401  (a fixture every test module may use)

from tunestep.tools.core.workspace import Workspace, open_workspace
from tunestep.tools.demo.sample_workspace import build_sample_workspace

# Shaped like a real token so any leak scan would find it; never valid anywhere. Built at
# run time so the repository itself holds nothing that looks like a token.
FAKE_TOKEN = "hf_" + "tunestepFAKEtoken0123456789abcdefSECRET"
REPO_ROOT = Path(__file__).resolve().parents[1]
CORPUS = REPO_ROOT.parent / "shared" / "corpus" / "real_formats"


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path_factory, monkeypatch):
    """No test sees the developer's HF token, config dir or network."""
    home = tmp_path_factory.mktemp("home")
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "TUNESTEP_WORKSPACE",
                 "TUNESTEP_OPERATOR_KEYS", "TUNESTEP_OPERATOR_PASSPHRASE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "config"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRACKIO_DIR", str(home / "trackio"))
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _hub_polls_at_once(monkeypatch):
    """The suite asks the Hub about a job whenever it likes; tests of the 10 s floor
    (tests/test_hf_submit.py) set it back and move an injected clock instead."""
    from tunestep.tools.hub import poll as hf_poll

    monkeypatch.setattr(hf_poll, "MIN_INTERVAL_S", 0.0)


def as_the_view_opens(ws: Workspace, request: pytest.FixtureRequest) -> Workspace:
    """The workspace with the context a view would hand down: it trusts the test
    operator's key when the test has one (signed promotion records verify when the
    ledger's line is read, as in the server and the CLI). No memo: a test keeps this one
    object across many calls, and each call must see the files as they are then."""
    keys = request.getfixturevalue("operator").trusted if (
        "operator" in request.fixturenames) else None
    return ws.for_call(keys, remember=False)


@pytest.fixture
def sample_ws(tmp_path, request) -> Workspace:
    build_sample_workspace(tmp_path / "ws")
    return as_the_view_opens(open_workspace(tmp_path / "ws"), request)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from tunestep.tools.demo.tiny_model import build_tiny_model

    out = tmp_path_factory.mktemp("tiny") / "model"
    build_tiny_model(out)
    return out


@pytest.fixture
def fake_token(monkeypatch) -> str:
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    return FAKE_TOKEN


def scan_for(needle: str, *roots: Path) -> list[Path]:
    """Every file under ``roots`` (links not followed twice) whose bytes hold ``needle``."""
    hits, seen = [], set()
    data = needle.encode()
    for root in roots:
        for dirpath, _dirs, files in os.walk(root, followlinks=True):
            for name in files:
                path = Path(dirpath) / name
                real = path.resolve()
                if real in seen or not real.is_file():
                    continue
                seen.add(real)
                if data in real.read_bytes():
                    hits.append(path)
    return hits


@pytest.fixture
def model_ws(tmp_path, tiny_model_dir, monkeypatch, request) -> Workspace:
    """A sample workspace whose model store holds the tiny model as its first checkpoint."""
    import shutil

    store = tmp_path / "store"
    shutil.copytree(tiny_model_dir, store / "qwen3_webdev" / "versions" / "0000_base")
    build_sample_workspace(tmp_path / "ws", store=store, with_model=True)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # tiny jobs: spinning threads only cost
    return as_the_view_opens(open_workspace(tmp_path / "ws"), request)


class Operator:
    """A test operator: a real key pair outside the workspace, and a way to approve."""

    def __init__(self, folder: Path, name: str = "tester") -> None:
        from tunestep.tools.signing.operator_keys import create_operator_key
        from tunestep.tools.signing.trusted_keys import load_trusted_keys

        self.name = name
        self.passphrase = b"test passphrase"
        self.info = create_operator_key(name, self.passphrase, folder)
        self.trusted = load_trusted_keys([self.info.public_key_path])

    def approve(self, ws: Workspace, draft_id: str, ttl: str = "1h") -> str:
        from tunestep.tools.drafts.operator import review_draft, sign_draft

        grant = sign_draft(ws, review_draft(ws, draft_id), name=self.name,
                           key_path=self.info.private_key_path, passphrase=self.passphrase,
                           ttl=ttl)
        return grant.token

    def trust(self, ws: Workspace) -> Workspace:
        """``ws`` as a view opens it for this operator (see ``as_the_view_opens``)."""
        return ws.for_call(self.trusted, remember=False)


@pytest.fixture
def operator(tmp_path) -> Operator:
    return Operator(tmp_path / "operator-keys")
