import os
import shutil
import time

from tunestep.server.cli import main as cli
from tunestep.tools.core import ledger
from tunestep.tools.data.preflight import check_batch


def codes(report):
    return {p.code: p.severity for p in report.problems}


def test_next_batch_is_lowest_untrained_and_stray_folders_are_ignored(sample_ws):
    inc = sample_ws.root / "datasets/incremental"
    (inc / "notes").mkdir()
    (inc / "batch_100_99.txt").write_text("not a folder")
    shutil.rmtree(inc / "batch_100_02")  # a gap
    report = check_batch(sample_ws)
    assert report.batch == "batch_100_01"
    assert [b.name for b in report.batches] == ["batch_100_01", "batch_100_03"]
    with ledger.open_ledger(sample_ws) as conn:
        conn.execute("INSERT INTO steps(step, batch, recorded_at) VALUES (1, 'batch_100_01', ?)",
                     (time.time(),))
    report = check_batch(sample_ws)
    assert report.batch == "batch_100_03" and report.step == 3
    assert "batch_gap" in codes(report)
    assert report.files[0].rows == 100 and len(report.files[0].sha256) == 64


def test_named_batch_missing_or_empty_is_an_error(sample_ws):
    report = check_batch(sample_ws, "batch_100_07")
    assert not report.ready and codes(report)["batch_missing"] == "error"
    (sample_ws.root / "datasets/incremental/batch_100_04").mkdir()
    report = check_batch(sample_ws, "batch_100_04")
    assert not report.ready and codes(report)["batch_empty"] == "error"


def test_holdout_is_pinned_then_a_change_is_reported_with_both_digests(sample_ws):
    path = sample_ws.root / "datasets/processed_webdev_coding/validation.jsonl"
    before = path.read_bytes()
    first = check_batch(sample_ws)
    assert first.validation.newly_pinned and first.ready
    second = check_batch(sample_ws)
    assert not second.validation.newly_pinned and not second.validation.changed
    assert path.read_bytes() == before  # never written
    path.write_bytes(before + b'{"messages": []}\n')
    third = check_batch(sample_ws)
    assert not third.ready and third.validation.changed
    problem = next(p for p in third.problems if p.code == "validation_changed")
    assert first.validation.sha256 in problem.message and third.validation.sha256 in problem.message


def test_missing_checkpoint_is_reported_not_raised(sample_ws, tmp_path):
    report = check_batch(sample_ws)
    assert codes(report)["checkpoint_missing"] == "warning"  # first step: base model is fine
    store = tmp_path / "store" / "qwen3_webdev"
    (store / "versions" / "0001_batch_100_01").mkdir(parents=True)
    (store / "versions" / "0001_batch_100_01" / "config.json").write_text("{}")
    os.symlink("versions/0001_batch_100_01", store / "latest")
    (sample_ws.root / "models").mkdir()
    os.symlink(store, sample_ws.root / "models" / "qwen3_webdev")
    report = check_batch(sample_ws)
    assert report.checkpoint.is_link and report.checkpoint.kind == "full"
    assert report.checkpoint.latest.endswith("0001_batch_100_01")
    shutil.rmtree(store)  # a dangling link: the store was not synced
    report = check_batch(sample_ws)
    assert "checkpoint_missing" in codes(report) and report.checkpoint.is_link


def test_token_availability_is_reported_never_its_value(sample_ws, fake_token, capsys):
    report = check_batch(sample_ws)
    assert report.hf_token_available and report.hf_token_source == "env:HF_TOKEN"
    assert fake_token not in report.model_dump_json()
    assert cli(["check", "-w", str(sample_ws.root)]) == 0
    assert cli(["check", "-w", str(sample_ws.root), "--json"]) == 0
    out = capsys.readouterr()
    assert fake_token not in out.out + out.err
    with ledger.open_ledger(sample_ws) as conn:
        rows = conn.execute("SELECT detail FROM audit").fetchall()
    assert all(fake_token not in r["detail"] for r in rows)


def test_token_file_counts_as_available(sample_ws, monkeypatch, tmp_path):
    token_file = tmp_path / "hf" / "token"
    token_file.parent.mkdir()
    token_file.write_text("hf_x\n")
    monkeypatch.setenv("HF_TOKEN_PATH", str(token_file))
    report = check_batch(sample_ws)
    assert report.hf_token_available and report.hf_token_source == "token file"


def test_cli_exit_codes(sample_ws, capsys):
    assert cli(["check", "-w", str(sample_ws.root)]) == 0
    assert cli(["check", "batch_100_08", "-w", str(sample_ws.root)]) == 1
    assert cli(["check", "../x", "-w", str(sample_ws.root)]) == 1
    assert "path_escape" in capsys.readouterr().err
    try:
        cli(["check", "--no-such-flag"])
    except SystemExit as exc:
        assert exc.code == 2


def test_serve_refuses_an_unreadable_operator_key_at_start(sample_ws, tmp_path, capsys):
    code = cli(["serve", "-w", str(sample_ws.root), "--operator-key", str(tmp_path / "nope.pem")])
    assert code == 1 and "operator_key_invalid" in capsys.readouterr().err
