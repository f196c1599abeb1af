"""The ledger's schema: its migrations, in order, each run once (``ledger.migrate``).

Apart from ``ledger.py`` because it is data, not code: one SQL script per schema
version, appended to and never edited (a ledger file records how far it has come in
``PRAGMA user_version``). What each table holds is in .specs/state_schema.md.
"""

MIGRATIONS: list[str] = [
    # 1: the first schema.
    """
    CREATE TABLE validation_pins (
        path TEXT PRIMARY KEY,
        sha256 TEXT NOT NULL,
        size INTEGER NOT NULL,
        rows INTEGER NOT NULL,
        pinned_at REAL NOT NULL
    );
    CREATE TABLE steps (
        step INTEGER PRIMARY KEY,
        batch TEXT NOT NULL UNIQUE,
        draft_id TEXT,
        job_id TEXT,
        digest TEXT,
        mode TEXT,
        datasets TEXT NOT NULL DEFAULT '[]',
        model_path TEXT,
        metrics TEXT NOT NULL DEFAULT '{}',
        recorded_at REAL NOT NULL
    );
    CREATE TABLE drafts (
        draft_id TEXT PRIMARY KEY,
        digest TEXT NOT NULL,
        kind TEXT NOT NULL,
        batch TEXT,
        payload TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE TABLE jobs (
        job_id TEXT PRIMARY KEY,
        draft_id TEXT NOT NULL REFERENCES drafts(draft_id),
        backend TEXT NOT NULL,
        status TEXT NOT NULL,
        pid INTEGER,
        external_id TEXT,
        url TEXT,
        log_path TEXT,
        created_at REAL NOT NULL,
        started_at REAL,
        ended_at REAL,
        exit_code INTEGER,
        result TEXT NOT NULL DEFAULT '{}'
    );
    CREATE TABLE approvals (
        nonce TEXT PRIMARY KEY,
        draft_id TEXT NOT NULL,
        kid TEXT NOT NULL,
        operator TEXT NOT NULL,
        job_id TEXT NOT NULL REFERENCES jobs(job_id),
        used_at REAL NOT NULL
    );
    CREATE TABLE inspections (
        cache_key TEXT PRIMARY KEY,
        path TEXT NOT NULL,
        report TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at REAL NOT NULL,
        action TEXT NOT NULL,
        target TEXT,
        outcome TEXT NOT NULL DEFAULT 'ok',
        detail TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX audit_action ON audit(action);
    """,
    # 2: where each step's model went and where each local version came from (issue 11):
    # the commit a step's job pushed (the next remote step resumes from exactly it), its
    # version folder, whether the job promoted it; and one row per local model version.
    """
    ALTER TABLE steps ADD COLUMN hub_model_id TEXT;
    ALTER TABLE steps ADD COLUMN hub_revision TEXT;
    ALTER TABLE steps ADD COLUMN version TEXT;
    ALTER TABLE steps ADD COLUMN promoted INTEGER NOT NULL DEFAULT 1;
    CREATE TABLE model_versions (
        store TEXT NOT NULL,
        version TEXT NOT NULL,
        step INTEGER,
        batch TEXT,
        job_id TEXT,
        source TEXT NOT NULL,
        hub_model_id TEXT,
        hub_revision TEXT,
        promoted INTEGER NOT NULL DEFAULT 1,
        recorded_at REAL NOT NULL,
        PRIMARY KEY (store, version)
    );
    """,
    # 3: the ledger's identity, a random id made with the ledger. Approval tokens carry
    # it, so a token signed for one ledger is refused by a ledger made afresh (deleting
    # the ledger forgets the used nonces; it must not make old tokens good again).
    """
    CREATE TABLE identity (
        one INTEGER PRIMARY KEY CHECK (one = 1),
        ledger_id TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    INSERT INTO identity(one, ledger_id, created_at)
        VALUES (1, lower(hex(randomblob(16))), CAST(strftime('%s', 'now') AS REAL));
    """,
    # 4: did the step help (issue 13): each step's hold-out evaluation summary and why it
    # was or was not promoted; the operator's promotion requests and the signed moves of
    # latest they led to (one row per token: its nonce is used once).
    """
    ALTER TABLE steps ADD COLUMN evaluation TEXT NOT NULL DEFAULT '{}';
    ALTER TABLE steps ADD COLUMN promotion_reason TEXT;
    CREATE TABLE promotion_requests (
        request_id TEXT PRIMARY KEY,
        digest TEXT NOT NULL,
        store TEXT NOT NULL,
        version TEXT NOT NULL,
        payload TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE TABLE promotions (
        nonce TEXT PRIMARY KEY,
        request_id TEXT NOT NULL REFERENCES promotion_requests(request_id),
        store TEXT NOT NULL,
        version TEXT NOT NULL,
        previous TEXT,
        kid TEXT NOT NULL,
        operator TEXT NOT NULL,
        at REAL NOT NULL
    );
    """,
    # 5: lineage that a running job or a clock jump cannot bend (tools/lineage/line.py): each
    # step's parent, the version its job actually trained from (resolved when the draft was
    # made; '' = the base model; NULL = recorded before schema 5), and one monotonic
    # sequence number per step record and per signed move of latest, taken from the
    # ``sequence`` table inside the writing transaction, so replay order is write order.
    """
    ALTER TABLE steps ADD COLUMN parent TEXT;
    ALTER TABLE steps ADD COLUMN seq INTEGER;
    ALTER TABLE promotions ADD COLUMN seq INTEGER;
    CREATE TABLE sequence (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        at REAL NOT NULL
    );
    """,
    # migration: branch evidence
    # latest moves only on evidence (issue 17): each signed move of latest keeps the token
    # it was made with (verified whenever the ledger's line is read: a forged row is
    # ignored), and each model version its files as [[path, sha256, size], ...] recorded
    # when the version was made (job commit, sync, or a signed promotion of a hand-put
    # folder): the resume point and promotion hashing check a version against them.
    """
    ALTER TABLE promotions ADD COLUMN token TEXT;
    ALTER TABLE model_versions ADD COLUMN files TEXT;
    """,
    # migration: branch manifest
    # 7: what is signed is what runs (issue 17): each draft's canonical manifest bytes,
    # the digest is sha256 over exactly them; ``payload`` keeps only what is shown and never
    # executed (estimate, warnings, run plan path). NULL: drafted before, never submitted.
    """
    ALTER TABLE drafts ADD COLUMN manifest BLOB;
    """,
    # migration: branch holdout_repin
    # 8: re-pinning the hold-out set is the operator's signed act (tools/data/holdout_repin.py):
    # the re-pin requests (their canonical bytes, what the token's digest is over), the
    # signed re-pins (one row per token, the token kept and verified on every read), and
    # a copy of each pinned hold-out's bytes, so a later re-pin can say which rows changed.
    """
    CREATE TABLE holdout_repin_requests (
        request_id TEXT PRIMARY KEY,
        digest TEXT NOT NULL,
        path TEXT NOT NULL,
        old_sha256 TEXT NOT NULL,
        new_sha256 TEXT NOT NULL,
        subject BLOB NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE TABLE holdout_repins (
        nonce TEXT PRIMARY KEY,
        request_id TEXT NOT NULL,
        path TEXT NOT NULL,
        old_sha256 TEXT NOT NULL,
        new_sha256 TEXT NOT NULL,
        kid TEXT NOT NULL,
        operator TEXT NOT NULL,
        at REAL NOT NULL,
        seq INTEGER,
        token TEXT
    );
    CREATE TABLE holdout_snapshots (
        sha256 TEXT PRIMARY KEY,
        path TEXT NOT NULL,
        size INTEGER NOT NULL,
        content BLOB NOT NULL,
        kept_at REAL NOT NULL
    );
    """,
    # migration: branch pin_continuity
    # 9: each used approval keeps the token it was submitted with, so the hold-out pin can
    # be checked against what the operator signed (tools/data/holdout_continuity.py): the
    # latest submitted training draft names the hold-out's sha256 it measured. NULL: used
    # before tokens were kept (no evidence, the pin stands on first sight as before).
    """
    ALTER TABLE approvals ADD COLUMN token TEXT;
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)
