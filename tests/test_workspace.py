import os

import pytest

from tunestep.tools.core.errors import TunestepError
from tunestep.tools.core.workspace import open_workspace


@pytest.mark.parametrize("bad, code", [
    ("../outside", "path_escape"),
    ("datasets/../../x", "path_escape"),
    ("/etc/passwd", "path_absolute"),
    ("datasets/\x00x", "path_control_char"),
    ("datasets/a\nb", "path_control_char"),
    ("", "path_empty"),
])
def test_bad_paths_are_refused_with_their_code(tmp_path, bad, code):
    ws = open_workspace(tmp_path)
    with pytest.raises(TunestepError) as err:
        ws.resolve(bad)
    assert err.value.code == code


def test_link_pointing_out_is_refused_but_model_store_link_is_allowed(tmp_path):
    root = tmp_path / "ws"
    outside = tmp_path / "outside"
    (root / "datasets").mkdir(parents=True)
    (root / "models").mkdir()
    outside.mkdir()
    (outside / "secret.jsonl").write_text("{}\n")
    os.symlink(outside, root / "datasets" / "sneaky")
    os.symlink(outside, root / "models" / "qwen3_webdev")
    ws = open_workspace(root)
    with pytest.raises(TunestepError) as err:
        ws.resolve("datasets/sneaky/secret.jsonl")
    assert err.value.code == "path_escape"
    assert ws.resolve_model_store("models/qwen3_webdev") == root / "models" / "qwen3_webdev"


def test_workspace_comes_from_argument_then_env_then_cwd(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    monkeypatch.setenv("TUNESTEP_WORKSPACE", str(b))
    assert open_workspace(a).root == a.resolve()
    assert open_workspace().root == b.resolve()
    monkeypatch.delenv("TUNESTEP_WORKSPACE")
    monkeypatch.chdir(a)
    assert open_workspace().root == a.resolve()
    with pytest.raises(TunestepError) as err:
        open_workspace(tmp_path / "missing")
    assert err.value.code == "workspace_missing"
