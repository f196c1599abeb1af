"""The hold-out pin against the operator's signature: after a signed, submitted training
draft, the pin in force must be the hold-out that draft measured, or a re-pin the
operator signed since. Rewriting the file and its ``validation_pins`` row together (raw
sqlite3, as anything that can write the ledger could) is refused; forged approvals rows
are no evidence."""

from __future__ import annotations

import hashlib
import sqlite3
import time

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from test_holdout_repin import HOLDOUT, codes, edit, holdout, sign

from tunestep.tools.core import ledger
from tunestep.tools.core.errors import TunestepError
from tunestep.tools.data.holdout_continuity import UNCONFIRMED
from tunestep.tools.data.holdout_repin import repin
from tunestep.tools.data.preflight import check_batch
from tunestep.tools.drafts.draft import DraftRequest, draft_job
from tunestep.tools.runs import submit as submit_module
from tunestep.tools.runs.submit import JobHandle, submit_job
from tunestep.tools.signing.approval import sign_approval
from tunestep.tools.signing.operator_keys import load_private_key


@pytest.fixture
def no_start(monkeypatch):
    """Submit claims the nonce (the approvals row, token kept) but starts nothing: the
    evidence is the ledger's, not the job's."""
    monkeypatch.setattr(submit_module, "_start", lambda ws, draft, job_id: JobHandle(
        job_id=job_id, draft_id=draft.draft_id, backend="local", status="running"))


def submitted(ws, operator) -> str:
    draft = draft_job(ws, DraftRequest(batch="batch_100_01"))
    handle = submit_job(ws, draft.draft_id, operator.approve(ws, draft.draft_id),
                        operator.trusted)
    return handle.job_id


def raw(ws) -> sqlite3.Connection:
    """The ledger file itself, past every check tunestep makes."""
    return sqlite3.connect(ws.state_dir / "state.sqlite", isolation_level=None)


def rewrite_both(ws) -> str:
    """Rewrite the hold-out and its first-sight pin row to match: the attack."""
    edit(ws)
    new = hashlib.sha256(holdout(ws).read_bytes()).hexdigest()
    with raw(ws) as conn:
        conn.execute("UPDATE validation_pins SET sha256 = ? WHERE path = ?", (new, HOLDOUT))
    return new


def test_no_signed_draft_yet_leaves_the_pin_as_it_was_and_says_so(model_ws, operator):
    report = check_batch(model_ws)
    assert report.validation.pin_note == UNCONFIRMED
    assert not report.validation.pin_unverified
    assert "validation_pin_unverified" not in codes(report)


def test_a_rewritten_holdout_and_pin_row_are_refused_after_a_signed_draft(
        model_ws, operator, no_start):
    ws = model_ws
    first = check_batch(ws).validation.sha256
    job = submitted(ws, operator)
    confirmed = check_batch(ws).validation
    assert confirmed.pin_note.startswith(f"confirmed by {job}") and not confirmed.pin_unverified

    new = rewrite_both(ws)
    report = check_batch(ws)
    assert report.validation.sha256 == report.validation.pinned_sha256 == new
    assert not report.validation.changed  # the ledger row alone would say all is well
    assert codes(report)["validation_pin_unverified"] == "error"
    message = next(p.message for p in report.problems if p.code == "validation_pin_unverified")
    assert first in message and job in message and "re-pins it" in message
    assert "repin_holdout()" in " ".join(report.next_actions)
    with pytest.raises(TunestepError) as err:
        draft_job(ws, DraftRequest(batch="batch_100_01"))
    assert err.value.code == "draft_preflight_failed"
    assert "validation_pin_unverified" in err.value.message
    assert err.value.hint is not None and err.value.hint.tool == "repin_holdout"
    from tunestep.tools.data.merge import merge_datasets

    with pytest.raises(TunestepError) as err:
        merge_datasets(ws, "batch_100_01")
    assert err.value.code == "validation_pin_unverified" and err.value.path == HOLDOUT

    # Deleting the pin row does not help either: pinned afresh, still not what was signed.
    with raw(ws) as conn:
        conn.execute("DELETE FROM validation_pins")
    again = check_batch(ws)
    assert again.validation.newly_pinned and again.validation.pin_unverified

    # The fix for a change the operator wants: they sign the hold-out as it is now.
    outcome = repin(ws, None, operator.trusted)
    assert outcome.request.subject.old_sha256 == outcome.request.subject.new_sha256 == new
    done = repin(ws, sign(ws, operator, outcome.request.request_id), operator.trusted)
    assert done.repinned
    settled = check_batch(ws)
    assert "validation_pin_unverified" not in codes(settled)
    assert settled.validation.pin_note.startswith(f"re-pinned by {outcome.request.request_id}")


def test_a_signed_repin_after_the_job_is_accepted_and_deleting_it_is_not(
        model_ws, operator, no_start):
    ws = model_ws
    check_batch(ws)
    submitted(ws, operator)
    edit(ws)
    assert codes(check_batch(ws))["validation_changed"] == "error"
    outcome = repin(ws, None, operator.trusted)
    assert repin(ws, sign(ws, operator, outcome.request.request_id), operator.trusted).repinned
    report = check_batch(ws)
    assert not report.validation.changed and not report.validation.pin_unverified
    assert not [p for p in report.problems if p.severity == "error"]

    # Forge it the other way: drop the signed re-pin and make its sha the first-sight pin.
    with raw(ws) as conn:
        conn.execute("DELETE FROM holdout_repins")
        conn.execute("UPDATE validation_pins SET sha256 = ?",
                     (outcome.request.subject.new_sha256,))
    assert codes(check_batch(ws))["validation_pin_unverified"] == "error"


def _forged_draft(ws, eval_sha: str) -> tuple[str, str]:
    """A drafts row whose manifest names ``eval_sha`` for the hold-out (self-consistent:
    its bytes hash to its digest), as the assistant could write it."""
    from tunestep.tools.signing.signed_manifest import draft_id_for

    with raw(ws) as conn:
        conn.row_factory = sqlite3.Row
        row = conn.execute("SELECT * FROM drafts WHERE kind = 'train' LIMIT 1").fetchone()
        manifest = orjson.loads(row["manifest"])
        for ref in manifest["files"]:
            if ref["role"] == "eval":
                ref["sha256"] = eval_sha
        data = orjson.dumps(manifest, option=orjson.OPT_SORT_KEYS)
        digest = hashlib.sha256(data).hexdigest()
        draft_id = draft_id_for(digest)
        conn.execute("INSERT INTO drafts(draft_id, digest, kind, batch, payload, manifest,"
                     " created_at) VALUES (?, ?, 'train', ?, ?, ?, ?)",
                     (draft_id, digest, row["batch"], row["payload"], data, time.time()))
    return draft_id, digest


def _kept(ws, draft_id: str, token: str) -> None:
    from tunestep.tools.signing.approval import parse_token

    claims = parse_token(token)[1]
    with raw(ws) as conn:
        conn.execute("INSERT INTO jobs(job_id, draft_id, backend, status, created_at)"
                     " VALUES (?, ?, 'local', 'starting', ?)",
                     (f"job-{claims.nonce[:12]}", draft_id, claims.iat))
        conn.execute("INSERT INTO approvals(nonce, draft_id, kid, operator, job_id, used_at,"
                     " token) VALUES (?, ?, ?, ?, ?, ?, ?)",
                     (claims.nonce, draft_id, claims.kid, claims.op,
                      f"job-{claims.nonce[:12]}", claims.iat, token))


def test_forged_approvals_rows_are_not_evidence(model_ws, operator, no_start):
    ws = model_ws
    check_batch(ws)
    submitted(ws, operator)
    new = rewrite_both(ws)
    forged_id, forged_digest = _forged_draft(ws, new)
    with ledger.open_ledger(ws) as conn:
        identity = ledger.ledger_id(conn)
        genuine_digest = conn.execute("SELECT digest FROM drafts WHERE draft_id != ?",
                                      (forged_id,)).fetchone()["digest"]
    later = time.time() + 5  # the forged evidence is the latest by its signed time
    claims = {"workspace": str(ws.root), "op": operator.name, "ttl_seconds": 3600,
              "ledger_id": identity, "now": later}
    key = load_private_key(operator.info.private_key_path, operator.passphrase)

    # a key this call does not trust
    _kept(ws, forged_id, sign_approval(Ed25519PrivateKey.generate(), draft_id=forged_id,
                                       digest=forged_digest, **claims))
    assert codes(check_batch(ws))["validation_pin_unverified"] == "error"
    # the operator's key, but the digest of another draft (the one they did sign)
    _kept(ws, forged_id, sign_approval(key, draft_id=forged_id, digest=genuine_digest,
                                       **claims))
    assert codes(check_batch(ws))["validation_pin_unverified"] == "error"
    # control: the same row with a token the operator did sign for it is evidence
    _kept(ws, forged_id, sign_approval(key, draft_id=forged_id, digest=forged_digest,
                                       **claims))
    report = check_batch(ws)
    assert "validation_pin_unverified" not in codes(report)
    assert report.validation.signed_sha256 == new


def test_the_check_screen_says_how_the_pin_stands_at_80_columns(
        model_ws, operator, no_start, capsys, monkeypatch):
    from test_cli_screens import flat, run

    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setenv("TUNESTEP_OPERATOR_KEYS", str(operator.info.public_key_path))
    ws = str(model_ws.root)
    _, out, _ = run(capsys, "check", "-w", ws)
    assert UNCONFIRMED in flat(out)
    job = submitted(model_ws, operator)
    _, out, _ = run(capsys, "check", "-w", ws)
    assert f"confirmed by {job}" in flat(out)
    rewrite_both(model_ws)
    code, out, _ = run(capsys, "check", "-w", ws)
    assert code == 1 and "validation_pin_unverified" in out
    assert "next: if the change is intended" in out and "tunestep repin" in flat(out)
    tmp = str(model_ws.root.parent)  # a pytest path is one token longer than 80 columns
    assert max(len(line) for line in out.splitlines() if tmp not in line) <= 80
