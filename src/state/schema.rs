//! Schema migrations, applied in order and counted with `PRAGMA user_version`.
//!
//! A migration is never edited once released: add a new one instead. Each runs
//! in the same transaction as the `user_version` bump, so a crash leaves the
//! database at the old version, never half-migrated.

use rusqlite::Connection;

const MIGRATIONS: &[&str] = &[
    // 1: the initial schema.
    r#"
CREATE TABLE subjects (
    label       TEXT PRIMARY KEY,
    created_at  INTEGER NOT NULL
);
CREATE TABLE sessions (
    scan_id       TEXT PRIMARY KEY,
    subject       TEXT NOT NULL REFERENCES subjects(label),
    session       TEXT NOT NULL,
    dicom_dir     TEXT NOT NULL,
    valid         INTEGER NOT NULL,
    problem       TEXT,
    n_files       INTEGER NOT NULL,
    discovered_at INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    UNIQUE (subject, session)
);
CREATE TABLE units (
    id              INTEGER PRIMARY KEY,
    pipeline        TEXT NOT NULL,
    subject         TEXT NOT NULL,
    session         TEXT NOT NULL DEFAULT '',
    attempts        INTEGER NOT NULL DEFAULT 0,
    infra_attempts  INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER,
    mem_mb          INTEGER,
    time_s          INTEGER,
    cancelled       INTEGER NOT NULL DEFAULT 0,
    last_run_id     INTEGER,
    success_run_id  INTEGER,
    UNIQUE (pipeline, subject, session)
);
CREATE TABLE runs (
    id            INTEGER PRIMARY KEY,
    unit_id       INTEGER NOT NULL REFERENCES units(id),
    attempt       INTEGER NOT NULL,
    token         TEXT NOT NULL UNIQUE,
    executor      TEXT NOT NULL,
    job_id        TEXT,
    state         TEXT NOT NULL,
    slurm_state   TEXT,
    exit_code     INTEGER,
    reason        TEXT,
    plan_reason   TEXT NOT NULL,
    node          TEXT,
    created_at    INTEGER NOT NULL,
    submitted_at  INTEGER,
    started_at    INTEGER,
    ended_at      INTEGER,
    elapsed_s     INTEGER,
    max_rss_mb    INTEGER,
    cpus          INTEGER NOT NULL,
    mem_mb        INTEGER NOT NULL,
    time_limit_s  INTEGER NOT NULL,
    gpus          INTEGER NOT NULL DEFAULT 0,
    config_hash   TEXT NOT NULL,
    inputs        TEXT NOT NULL DEFAULT '[]',
    depends_on    TEXT NOT NULL DEFAULT '[]',
    script_path   TEXT NOT NULL,
    log_path      TEXT NOT NULL,
    unseen_since  INTEGER,
    pid           INTEGER
);
CREATE INDEX runs_unit ON runs(unit_id);
CREATE INDEX runs_open ON runs(state) WHERE state IN ('submitting', 'pending', 'running');
CREATE INDEX runs_job ON runs(job_id);
CREATE TABLE audit (
    id        INTEGER PRIMARY KEY,
    at        INTEGER NOT NULL,
    unit_id   INTEGER,
    run_id    INTEGER,
    scan_id   TEXT,
    old_state TEXT,
    new_state TEXT NOT NULL,
    reason    TEXT NOT NULL
);
CREATE INDEX audit_unit ON audit(unit_id);
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"#,
    // 2: units by subject and session, for the runs of a session whose labels
    // the mapping sheet changes (`register_sessions`); the unique index
    // starts with the pipeline, so that lookup scanned every unit.
    r#"
CREATE INDEX units_subject ON units(subject, session);
"#,
    // 3: the Slurm cluster a run was submitted to (`sbatch -M`), so that it
    // is looked for there; NULL: the default cluster (or the local executor).
    r#"
ALTER TABLE runs ADD COLUMN cluster TEXT;
"#,
    // 4: runs summarised by `nfslurm clean` (older than
    // `housekeeping.summarise_runs_after`): per unit and end state, how many,
    // when, and what they used; their rows are then deleted.
    r#"
CREATE TABLE run_summaries (
    unit_id          INTEGER NOT NULL REFERENCES units(id),
    state            TEXT NOT NULL,
    runs             INTEGER NOT NULL,
    first_created_at INTEGER NOT NULL,
    last_ended_at    INTEGER,
    elapsed_s        INTEGER NOT NULL DEFAULT 0,
    max_rss_mb       INTEGER,
    PRIMARY KEY (unit_id, state)
);
"#,
    // 5: what each session folder's DICOM headers say, kept under the
    // folder's fingerprint so that an unchanged folder is never read again.
    r#"
CREATE TABLE session_headers (
    folder      TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    summary     TEXT NOT NULL,
    read_at     INTEGER NOT NULL
);
"#,
    // 6: provenance: what produced each run's output (fixed at submission),
    // and the image digests, computed once per (path, size, mtime).
    r#"
CREATE TABLE run_provenance (
    run_id     INTEGER PRIMARY KEY REFERENCES runs(id),
    provenance TEXT NOT NULL
);
CREATE TABLE image_digests (
    path     TEXT PRIMARY KEY,
    size     INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256   TEXT NOT NULL
);
"#,
    // 5: the validation verdict of each folder's files under the rules of
    // `verdict_key`, so that an unchanged study is not validated again.
    r#"
ALTER TABLE session_headers ADD COLUMN verdict_key TEXT;
ALTER TABLE session_headers ADD COLUMN on_headers INTEGER;
ALTER TABLE session_headers ADD COLUMN problem TEXT;
"#,
];

/// The schema version this binary writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

pub fn migrate(conn: &mut Connection) -> rusqlite::Result<i64> {
    let current: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if current > SCHEMA_VERSION {
        return Err(rusqlite::Error::InvalidParameterName(format!(
            "state.db has schema version {current}, newer than this nfslurm ({SCHEMA_VERSION}): upgrade nfslurm"
        )));
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        // Immediate, and the version read again under the write lock: two
        // processes opening a new study at once migrate it once.
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let now: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if now > index as i64 {
            tx.commit()?;
            continue;
        }
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (index + 1) as i64)?;
        tx.commit()?;
    }
    Ok(current)
}
