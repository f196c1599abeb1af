"""The approval protocol: only a token signed by a trusted operator key verifies."""

from __future__ import annotations

import base64
import os
import re
import stat

import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunestep.tools.core.errors import TunestepError
from tunestep.tools.signing import approval as A
from tunestep.tools.signing import operator_keys as K
from tunestep.tools.signing import trusted_keys as T

NOW = 1_800_000_000
DIGEST = "3f" * 32
LEDGER = "5e" * 16  # the ledger identity a token is bound to
WORKSPACE = "/home/op/repositories/opedDev"
PASS = b"correct horse battery staple"
B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims_dict(key: Ed25519PrivateKey, **overrides) -> dict:
    claims = {
        "v": 1,
        "aud": "tunestep",
        "act": "submit_job",
        "draft_id": "draft-0003",
        "digest": DIGEST,
        "workspace": WORKSPACE,
        "op": "alice",
        "kid": K.key_id(key.public_key()),
        "ledger": LEDGER,
        "iat": NOW,
        "exp": NOW + 3600,
        "nonce": "0123456789abcdef0123456789abcdef",
    }
    claims.update(overrides)
    return claims


def forge(key: Ed25519PrivateKey, claims: dict | bytes, prefix: str = "tsa1") -> str:
    """A correctly signed token over arbitrary claims: what a buggy or hostile signer makes."""
    raw = claims if isinstance(claims, bytes) else orjson.dumps(claims, option=orjson.OPT_SORT_KEYS)
    return f"{prefix}.{b64(raw)}.{b64(key.sign(raw))}"


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def trusted(key) -> dict:
    return {K.key_id(key.public_key()): key.public_key()}


@pytest.fixture(scope="module")
def token(key) -> str:
    return A.sign_approval(
        key,
        draft_id="draft-0003",
        digest=DIGEST,
        workspace=WORKSPACE,
        op="alice",
        ttl_seconds=3600, ledger_id=LEDGER,
        now=NOW,
    )


def refusal(token, trusted, now=NOW + 10) -> TunestepError:
    with pytest.raises(TunestepError) as err:
        A.verify_approval(token, trusted, now=now)
    return err.value


# --------------------------------------------------------------------------- round trip


def test_round_trip(key, trusted, token):
    assert re.fullmatch(r"tsa1\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]{86}", token)
    claims = A.verify_approval(token, trusted, now=NOW + 10)
    assert claims.model_dump() == {
        **claims_dict(key),
        "nonce": claims.nonce,
    }
    assert re.fullmatch(r"[0-9a-f]{32}", claims.nonce)
    claims_bytes, parsed, signature = A.parse_token(token)
    assert parsed == claims and len(signature) == 64
    assert claims_bytes == A.canonical_claims_bytes(claims)
    assert b" " not in claims_bytes and claims_bytes.startswith(b'{"act":')


def test_nonces_are_fresh(key):
    tokens = {
        A.parse_token(
            A.sign_approval(
                key, draft_id="d", digest=DIGEST, workspace="/w", op="o",
                ttl_seconds=60, ledger_id=LEDGER
            )
        )[1].nonce
        for _ in range(20)
    }
    assert len(tokens) == 20


def test_pasted_whitespace_is_tolerated(trusted, token):
    assert A.verify_approval(f"  {token}\n", trusted, now=NOW).draft_id == "draft-0003"


def test_key_id_is_sha256_prefix_of_raw_public_key(key):
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    import hashlib

    assert K.key_id(key.public_key()) == hashlib.sha256(raw).hexdigest()[:16]


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("empty", [None, "", "   ", "\n"])
def test_missing(trusted, empty):
    assert refusal(empty, trusted).code == "approval_missing"


def test_malformed_shapes(key, trusted, token):
    _, claims_text, sig_text = token.split(".")
    cases = [
        "hello",
        f"tsa2.{claims_text}.{sig_text}",
        f"{claims_text}.{sig_text}",
        f"{token}.extra",
        f"tsa1.{claims_text}=.{sig_text}",
        f"tsa1.{claims_text}.{sig_text}==",
        f"tsa1.{claims_text}.{sig_text[:-4]}",
        f"tsa1.{claims_text}+.{sig_text}",
        f"tsa1..{sig_text}",
        "tsa1." + "A" * 9000 + "." + sig_text,
        12345,
    ]
    for case in cases:
        err = refusal(case, trusted)
        assert err.code == "approval_malformed", case


@pytest.mark.parametrize(
    "claims",
    [
        {"v": 2},
        {"v": True},
        {"v": "1"},
        {"iat": 1.5},
        {"extra": "x"},
        {"digest": "ABC"},
        {"kid": "zz"},
        {"workspace": "relative/ws"},
        {"nonce": "short"},
        {"draft_id": "../etc"},
    ],
)
def test_malformed_claims_even_when_signed(key, trusted, claims):
    assert refusal(forge(key, claims_dict(key, **claims)), trusted).code == "approval_malformed"


def test_malformed_missing_claim(key, trusted):
    claims = claims_dict(key)
    del claims["nonce"]
    assert refusal(forge(key, claims), trusted).code == "approval_malformed"


def test_malformed_non_canonical_or_duplicate_json(key, trusted):
    spaced = orjson.dumps(claims_dict(key), option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2)
    unsorted = orjson.dumps(claims_dict(key))  # insertion order: v first
    dup = orjson.dumps(claims_dict(key), option=orjson.OPT_SORT_KEYS)[:-1] + b',"v":1}'
    for raw in (spaced, unsorted, dup, b"[1,2]", b"\xff\xfe", b"not json"):
        assert refusal(forge(key, raw), trusted).code == "approval_malformed", raw


def test_untrusted_key(token):
    other = Ed25519PrivateKey.generate()
    assert refusal(token, {K.key_id(other.public_key()): other.public_key()}).code == (
        "approval_untrusted_key"
    )


def test_untrusted_when_nothing_is_trusted(token):
    err = refusal(token, {})
    assert err.code == "approval_untrusted_key"
    assert "TUNESTEP_OPERATOR_KEYS" in err.message


def test_kid_claimed_for_a_trusted_key_but_signed_by_another(key, trusted):
    attacker = Ed25519PrivateKey.generate()
    # The attacker copies the trusted kid into claims it signs with its own key.
    assert refusal(forge(attacker, claims_dict(key)), trusted).code == "approval_bad_signature"


def test_bad_signature_on_changed_claims(key, trusted, token):
    _, _, sig = token.split(".")
    claims, _, _ = A.parse_token(token)
    changed = claims.replace(b"draft-0003", b"draft-0004")
    assert refusal(f"tsa1.{b64(changed)}.{sig}", trusted).code == "approval_bad_signature"


def test_wrong_audience(key, trusted):
    assert refusal(forge(key, claims_dict(key, aud="other")), trusted).code == (
        "approval_wrong_audience"
    )


def test_wrong_action(key, trusted):
    assert refusal(forge(key, claims_dict(key, act="delete_model")), trusted).code == (
        "approval_wrong_action"
    )


def test_expired(trusted, token):
    assert refusal(token, trusted, now=NOW + 3600).code == "approval_expired"
    assert refusal(token, trusted, now=NOW + 10**6).code == "approval_expired"
    assert A.verify_approval(token, trusted, now=NOW + 3599)


def test_issued_in_the_future(key, trusted):
    future = forge(key, claims_dict(key, iat=NOW + 301, exp=NOW + 4000))
    assert refusal(future, trusted, now=NOW).code == "approval_expired"
    skewed = forge(key, claims_dict(key, iat=NOW + 300, exp=NOW + 4000))
    assert A.verify_approval(skewed, trusted, now=NOW)


def test_signature_is_checked_before_any_claim_semantics(key, trusted):
    attacker = Ed25519PrivateKey.generate()
    bad = forge(attacker, claims_dict(key, aud="x", act="y", exp=1, iat=1))
    assert refusal(bad, trusted).code == "approval_bad_signature"
    stranger = forge(attacker, claims_dict(attacker, aud="x", exp=1, iat=1))
    assert refusal(stranger, trusted).code == "approval_untrusted_key"


def test_refusals_never_echo_the_token(key, trusted, token):
    other = {K.key_id(k.public_key()): k.public_key() for k in [Ed25519PrivateKey.generate()]}
    for tok, keys in [(token, other), (token + "x", trusted), (token, trusted)]:
        with pytest.raises(TunestepError) as err:
            A.verify_approval(tok, keys, now=NOW + 10**7)
        assert token.split(".")[1][:20] not in str(err.value)
        assert token.split(".")[2][:20] not in str(err.value)


# --------------------------------------------------------------------------- mutations


def test_every_single_character_substitution_is_refused(trusted, token):
    alphabet = B64URL + ".= \n\t\x00é"
    tried = 0
    for i, original in enumerate(token):
        for replacement in alphabet:
            if replacement == original:
                continue
            mutated = token[:i] + replacement + token[i + 1 :]
            with pytest.raises(TunestepError):
                A.verify_approval(mutated, trusted, now=NOW + 10)
            tried += 1
    assert tried > 60 * len(token)


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_any_single_byte_mutation_is_refused(trusted, token, data):
    raw = bytearray(token.encode("ascii"))
    position = data.draw(st.integers(0, len(raw) - 1))
    value = data.draw(st.integers(0, 255).filter(lambda b: b != raw[position]))
    raw[position] = value
    with pytest.raises(TunestepError):
        A.verify_approval(raw.decode("latin-1"), trusted, now=NOW + 10)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=st.text(max_size=600))
def test_arbitrary_text_never_verifies_and_never_crashes(trusted, text):
    with pytest.raises(TunestepError) as err:
        A.verify_approval(text, trusted, now=NOW)
    assert err.value.code.startswith("approval_")


# --------------------------------------------------------------------------- key files


def test_key_files_modes_and_contents(tmp_path):
    old = os.umask(0)  # even a careless umask must not widen the private key
    try:
        info = K.create_operator_key("alice", PASS, tmp_path / "op")
    finally:
        os.umask(old)
    assert info.private_key_path == tmp_path / "op" / "alice.key.pem"
    assert info.public_key_path == tmp_path / "op" / "alice.pub.pem"
    assert stat.S_IMODE(info.private_key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(info.public_key_path.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "op").stat().st_mode) == 0o700
    pem = info.private_key_path.read_bytes()
    assert pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert not list((tmp_path / "op").glob(".*.tmp"))
    key = K.load_private_key(info.private_key_path, PASS)
    assert K.key_id(key.public_key()) == info.kid
    assert list(T.load_trusted_keys([info.public_key_path])) == [info.kid]


def test_default_dir_follows_xdg(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    info = K.create_operator_key("bob", PASS)
    assert info.private_key_path.parent == tmp_path / "cfg" / "tunestep" / "operator"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert K.default_operator_dir() == tmp_path / "home" / ".config" / "tunestep" / "operator"


def test_wrong_passphrase_is_locked_not_a_traceback(tmp_path):
    info = K.create_operator_key("alice", PASS, tmp_path)
    for wrong in (b"wrong", b""):
        with pytest.raises(TunestepError) as err:
            K.load_private_key(info.private_key_path, wrong)
        assert err.value.code == "operator_key_locked"
        assert err.value.path == str(info.private_key_path)
        assert PASS.decode() not in str(err.value)


def test_key_is_never_overwritten(tmp_path):
    info = K.create_operator_key("alice", PASS, tmp_path)
    before = info.private_key_path.read_bytes(), info.public_key_path.read_bytes()
    with pytest.raises(TunestepError) as err:
        K.create_operator_key("alice", b"another", tmp_path)
    assert err.value.code == "operator_key_exists"
    assert (info.private_key_path.read_bytes(), info.public_key_path.read_bytes()) == before
    # A stray public half alone also blocks: the pair must stay a pair.
    (tmp_path / "carol.pub.pem").write_bytes(b"x")
    with pytest.raises(TunestepError) as err:
        K.create_operator_key("carol", PASS, tmp_path)
    assert err.value.code == "operator_key_exists"
    assert not (tmp_path / "carol.key.pem").exists()


def test_bad_names_and_empty_passphrase(tmp_path):
    for name in ("", "../x", "a/b", ".hidden", "x" * 65):
        with pytest.raises(TunestepError) as err:
            K.create_operator_key(name, PASS, tmp_path)
        assert err.value.code == "operator_name_invalid"
    with pytest.raises(TunestepError) as err:
        K.create_operator_key("alice", b"", tmp_path)
    assert err.value.code == "operator_passphrase_empty"
    assert list(tmp_path.iterdir()) == []


def test_private_key_readable_by_others_is_refused(tmp_path):
    info = K.create_operator_key("alice", PASS, tmp_path)
    info.private_key_path.chmod(0o644)
    with pytest.raises(TunestepError) as err:
        K.load_private_key(info.private_key_path, PASS)
    assert err.value.code == "operator_key_permissions"


def test_key_in_an_unrelated_dir_is_not_trusted_unless_passed(tmp_path):
    alice = K.create_operator_key("alice", PASS, tmp_path / "alice")
    mallory = K.create_operator_key("mallory", PASS, tmp_path / "elsewhere")
    trusted = T.load_trusted_keys(T.trusted_key_paths_from_env(str(alice.public_key_path)))
    mallory_key = K.load_private_key(mallory.private_key_path, PASS)
    tok = A.sign_approval(
        mallory_key, draft_id="d", digest=DIGEST, workspace="/w", op="mallory",
                ttl_seconds=60, ledger_id=LEDGER
    )
    assert refusal(tok, trusted, now=None).code == "approval_untrusted_key"
    both = T.trusted_key_paths_from_env(
        f"{alice.public_key_path}{os.pathsep}{os.pathsep}{mallory.public_key_path}"
    )
    assert A.verify_approval(tok, T.load_trusted_keys(both)).op == "mallory"


def test_trusted_key_paths_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert T.trusted_key_paths_from_env("") == []
    assert T.trusted_key_paths_from_env(f" ~/a.pub.pem {os.pathsep}") == [tmp_path / "a.pub.pem"]
    with pytest.raises(TunestepError) as err:
        T.trusted_key_paths_from_env("keys/a.pub.pem")
    assert err.value.code == "operator_key_invalid"


def test_invalid_trusted_keys_name_the_path(tmp_path):
    ec_pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    info = K.create_operator_key("alice", PASS, tmp_path / "k")
    (tmp_path / "ec.pub.pem").write_bytes(ec_pem)
    (tmp_path / "junk.pem").write_bytes(b"junk")
    for path in (
        tmp_path / "ec.pub.pem",
        tmp_path / "junk.pem",
        tmp_path / "missing.pem",
        info.private_key_path,
    ):
        with pytest.raises(TunestepError) as err:
            T.load_trusted_keys([info.public_key_path, path])
        assert err.value.code == "operator_key_invalid"
        assert err.value.path == str(path)


def test_keys_inside_the_workspace_are_refused(tmp_path):
    ws = tmp_path / "ws"
    (ws / "keys").mkdir(parents=True)
    (ws / "keys" / "a.pub.pem").write_bytes(b"")
    with pytest.raises(TunestepError) as err:
        T.ensure_keys_outside_workspace([ws / "keys" / "a.pub.pem"], ws)
    assert err.value.code == "operator_key_in_workspace"
    T.ensure_keys_outside_workspace([tmp_path / "a.pub.pem"], ws)


# --------------------------------------------------------------------------- ttl


@pytest.mark.parametrize(
    ("text", "seconds"), [("45s", 45), ("30m", 1800), ("1h", 3600), ("2d", 172800), (" 1h ", 3600)]
)
def test_parse_ttl(text, seconds):
    assert A.parse_ttl(text) == seconds


@pytest.mark.parametrize("text", ["", "1", "h", "1.5h", "-1h", "0s", "31d", "1w", "1 hour", None])
def test_parse_ttl_refuses(text):
    with pytest.raises(TunestepError) as err:
        A.parse_ttl(text)
    assert err.value.code == "bad_ttl"


def test_sign_refuses_bad_inputs(key):
    with pytest.raises(TunestepError) as err:
        A.sign_approval(key, draft_id="d", digest="x", workspace="/w", op="o", ttl_seconds=60,
                        ledger_id=LEDGER)
    assert err.value.code == "approval_claims_invalid"
    with pytest.raises(TunestepError) as err:
        A.sign_approval(key, draft_id="d", digest=DIGEST, workspace="/w", op="o", ttl_seconds=0,
                        ledger_id=LEDGER)
    assert err.value.code == "bad_ttl"
