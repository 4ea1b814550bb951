//! The agent's exemption store: an embedded SQLite database (`smtpguard.db` in the state
//! directory) holding the runtime exemptions, the runtime relays (on top of the config's) and
//! the audit trail of every change.
//!
//! Every change and its audit entry are written in one `BEGIN IMMEDIATE` transaction, so the
//! trail never misses or invents a change, and concurrent writers (the agent and an ops CLI, or
//! several CLIs) queue on SQLite's lock (WAL journal plus a busy timeout) instead of failing.
//! `synchronous=FULL` makes every committed change survive a crash, a power cut or `kill -9`.
//!
//! Times are stored as integer Unix milliseconds. Prefixes are stored as their canonical text
//! (the key) plus family, network address bytes and prefix length, which give the listing order:
//! IPv4 before IPv6, then by address, then by length.
//!
//! The store checks no policy (whether an exemption lies inside a subscriber range is the
//! agent's business), only what keeps the data sane: prefixes without host bits, non-empty
//! exemption reasons, text without control characters and at most [`MAX_TEXT_BYTES`] bytes,
//! expiry times in the future.
//!
//! The schema is versioned with `PRAGMA user_version`: [`MIGRATIONS`]`[i]` takes a database from
//! version `i` to `i + 1`. To change the schema, append a migration; never edit a released one.

mod audit;
mod escalations;
mod exemptions;
mod fleet_cache;
mod history;
mod identities;
mod relays;
mod shipping;

use std::fmt;
use std::fs::{self, DirBuilder};
use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use rusqlite::{Connection, ErrorCode, OptionalExtension as _, Transaction, TransactionBehavior};
use serde::Serializer;

pub use audit::{AuditAction, AuditEntry, ParseAuditActionError};
pub use escalations::{BotEvent, Escalation};
pub use exemptions::{Exemption, ExemptionUpdate, NewExemption};
pub use fleet_cache::{CachedKey, FleetCache};
pub use history::{HostCursor, HostInterval, SnapshotState};
pub(crate) use history::{decode_records, put_limited, put_record};
pub use identities::{
    Binding, Holder, MAX_SUBSCRIBER_BYTES, NewSubscriberExemption, SubscriberExemption,
    check_subscriber, holder_at,
};
pub use relays::{NewRelay, RuntimeRelay};
pub use shipping::IntervalSpan;

/// The database's file name inside the state directory.
pub const DB_FILE_NAME: &str = "smtpguard.db";

/// The most bytes a text field (reason, ticket, who, note, audit subject and detail) may hold.
pub const MAX_TEXT_BYTES: usize = 1024;

/// The `who` of the changes the store or the agent makes by itself (expiries).
pub const SYSTEM_WHO: &str = "smtpguard";

/// How long an operation waits for another process's write to finish before giving up with
/// [`StoreError::Locked`].
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The mode of a state directory that [`Store::open`] creates: the agent's user writes, its
/// group (an admin group) may look; others may not even list it, since the history in it is
/// per-subscriber abuse data.
const STATE_DIR_MODE: u32 = 0o750;

/// The mode of the files the agent creates in the state directory (the database, and through
/// SQLite, which gives its journal files the database's mode, `-wal` and `-shm`; the lock).
pub const STATE_FILE_MODE: u32 = 0o640;

/// The latest time the store can hold (the last millisecond of year 9999), so that every stored
/// time has an RFC 3339 form.
const MAX_MILLIS: i64 = 253_402_300_799_999;

/// One schema migration: SQL, or code where rows must be rewritten.
enum Migration {
    Sql(&'static str),
    Code(fn(&Transaction<'_>, &Path) -> Result<(), StoreError>),
}

/// Schema migrations; `MIGRATIONS[i]` upgrades `user_version` `i` to `i + 1`.
const MIGRATIONS: &[Migration] = &[
    // 1: exemptions, runtime relays, audit trail.
    Migration::Sql(
        "CREATE TABLE exemptions (
         prefix     TEXT    NOT NULL PRIMARY KEY,
         family     INTEGER NOT NULL CHECK (family IN (4, 6)),
         address    BLOB    NOT NULL CHECK (length(address) = CASE family WHEN 4 THEN 4 ELSE 16 END),
         length     INTEGER NOT NULL CHECK (length BETWEEN 0 AND CASE family WHEN 4 THEN 32 ELSE 128 END),
         reason     TEXT    NOT NULL,
         ticket     TEXT,
         who        TEXT    NOT NULL,
         created_ms INTEGER NOT NULL,
         expires_ms INTEGER
     ) STRICT;
     CREATE UNIQUE INDEX exemptions_order ON exemptions (family, address, length);
     CREATE INDEX exemptions_expiry ON exemptions (expires_ms) WHERE expires_ms IS NOT NULL;

     CREATE TABLE relays (
         prefix     TEXT    NOT NULL PRIMARY KEY,
         family     INTEGER NOT NULL CHECK (family IN (4, 6)),
         address    BLOB    NOT NULL CHECK (length(address) = CASE family WHEN 4 THEN 4 ELSE 16 END),
         length     INTEGER NOT NULL CHECK (length BETWEEN 0 AND CASE family WHEN 4 THEN 32 ELSE 128 END),
         note       TEXT,
         who        TEXT    NOT NULL,
         created_ms INTEGER NOT NULL
     ) STRICT;
     CREATE UNIQUE INDEX relays_order ON relays (family, address, length);

     CREATE TABLE audit (
         id      INTEGER PRIMARY KEY AUTOINCREMENT,
         at_ms   INTEGER NOT NULL,
         action  TEXT    NOT NULL,
         subject TEXT    NOT NULL,
         who     TEXT    NOT NULL,
         detail  TEXT    NOT NULL
     ) STRICT;
     CREATE INDEX audit_at ON audit (at_ms, id);",
    ),
    // 2: per-host statistics history (snapshot intervals) and the snapshot cursors.
    Migration::Sql(
        "CREATE TABLE host_intervals (
         host        BLOB    NOT NULL CHECK (length(host) = 16),
         start_ms    INTEGER NOT NULL,
         end_ms      INTEGER NOT NULL CHECK (end_ms > start_ms),
         first_ms    INTEGER NOT NULL,
         last_ms     INTEGER NOT NULL,
         attempts    INTEGER NOT NULL CHECK (attempts >= 0),
         segments    INTEGER NOT NULL CHECK (segments > 0),
         dropped     INTEGER NOT NULL CHECK (dropped >= 0),
         sketch      BLOB    NOT NULL CHECK (length(sketch) = 64),
         last_dst    BLOB    NOT NULL CHECK (length(last_dst) = 16),
         last_port   INTEGER NOT NULL,
         last_reason INTEGER NOT NULL,
         PRIMARY KEY (host, end_ms)
     ) STRICT, WITHOUT ROWID;
     CREATE INDEX host_intervals_end ON host_intervals (end_ms);

     CREATE TABLE host_cursors (
         host          BLOB    NOT NULL PRIMARY KEY CHECK (length(host) = 16),
         attempts      INTEGER NOT NULL,
         segments      INTEGER NOT NULL,
         dropped       INTEGER NOT NULL,
         first_seen_ns INTEGER NOT NULL
     ) STRICT, WITHOUT ROWID;

     CREATE TABLE snapshot_state (
         id       INTEGER PRIMARY KEY CHECK (id = 1),
         epoch    INTEGER NOT NULL,
         last_ms  INTEGER NOT NULL
     ) STRICT;",
    ),
    // 3: bot classifications (reoffenders) and escalations of monitor-mode hosts.
    Migration::Sql(
        "CREATE TABLE bot_events (
         host        BLOB    NOT NULL CHECK (length(host) = 16),
         at_ms       INTEGER NOT NULL,
         reason      TEXT    NOT NULL,
         PRIMARY KEY (host, at_ms)
     ) STRICT, WITHOUT ROWID;
     CREATE INDEX bot_events_at ON bot_events (at_ms);

     CREATE TABLE escalations (
         id          INTEGER PRIMARY KEY AUTOINCREMENT,
         host        BLOB    NOT NULL CHECK (length(host) = 16),
         started_ms  INTEGER NOT NULL,
         until_ms    INTEGER NOT NULL CHECK (until_ms > started_ms),
         level       INTEGER NOT NULL CHECK (level >= 0),
         ended_ms    INTEGER,
         ended_by    TEXT
     ) STRICT;
     CREATE UNIQUE INDEX escalations_active ON escalations (host) WHERE ended_ms IS NULL;",
    ),
    // 4: history and cursors packed into chunks of records (see `history`).
    Migration::Code(history::pack_rows_into_chunks),
    // 5: the last good fleet policy read from etcd (see `fleet_cache`) and how far the
    // history has been shipped to the fleet's PostgreSQL (see `shipping`).
    Migration::Sql(
        "CREATE TABLE fleet_keys (
         key          TEXT    NOT NULL PRIMARY KEY,
         value        BLOB    NOT NULL,
         mod_revision INTEGER NOT NULL
     ) STRICT;
     CREATE TABLE fleet_state (
         id        INTEGER PRIMARY KEY CHECK (id = 1),
         revision  INTEGER NOT NULL,
         synced_ms INTEGER NOT NULL
     ) STRICT;
     CREATE TABLE fleet_shipping (
         id             INTEGER PRIMARY KEY CHECK (id = 1),
         shipped_end_ms INTEGER NOT NULL
     ) STRICT;",
    ),
    // 6: exact destination sets beside each chunk's records (see `history`).
    Migration::Sql(history::EXACT_SETS),
    // 7: subscriber identity exemptions and the bindings of addresses to identities (see
    // `identities`).
    Migration::Sql(identities::SCHEMA),
    // 8: limited attempts beside each chunk's records and cursors (see `history`).
    Migration::Sql(history::LIMITED),
    // 9: the NAS that announced each binding and the identity of each bot event (see
    // `identities`).
    Migration::Sql(identities::MIGRATION_9),
];

/// The schema version this build writes and understands.
const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// An open exemption store. Each `Store` has its own SQLite connection; any number of them, in
/// this process or others, may use the same database at once.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    /// The database file, for error messages.
    path: PathBuf,
}

/// Which kind of entry an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    Exemption,
    Relay,
}

impl fmt::Display for EntryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EntryKind::Exemption => "exemption",
            EntryKind::Relay => "runtime relay",
        })
    }
}

/// Why a store operation failed.
///
/// The variants about the database file carry its path and SQLite's error; the validation
/// variants name the offending field or value and what was expected. A failed operation has
/// changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the state directory {}: {source}", .path.display())]
    CreateStateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The database file could not be created with the state files' mode.
    #[error(
        "cannot create the exemption store {} (mode 0640); expected a writable state folder",
        .path.display()
    )]
    CreateFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The database file cannot be opened (missing permission, not a regular file, ...).
    #[error("cannot open the exemption store {}: {source}", .path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },

    /// The database file, its directory or its file system is read-only.
    #[error("cannot write the exemption store {}: {source}", .path.display())]
    ReadOnly {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },

    /// The file system holding the database is mounted read-only, or the kernel made it so
    /// after an error: SQLite sees an I/O error, this names the cause.
    #[error(
        "cannot write the exemption store {}: its file system is read-only ({source}); expected \
         a writable state folder (remount it read-write, or repair and mount it again)",
        .path.display()
    )]
    ReadOnlyFileSystem {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },

    /// The file system holding the database is full (SQLITE_FULL).
    #[error(
        "cannot write the exemption store {}: {source}; expected free space on its file system",
        .path.display()
    )]
    DiskFull {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },

    #[error("input/output error on the exemption store {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },

    /// Another connection held the write lock for longer than [`BUSY_TIMEOUT`].
    #[error(
        "the exemption store {} stayed locked by another process for more than {} seconds: \
         {source}",
        .path.display(),
        BUSY_TIMEOUT.as_secs()
    )]
    Locked {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },

    #[error(
        "the exemption store {} is damaged or not an SQLite database: {source}; restore it from \
         a backup or move it aside",
        .path.display()
    )]
    Corrupt {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },

    /// Any other SQLite failure.
    #[error("exemption store {}: {source}", .path.display())]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },

    #[error(
        "the exemption store {} is not in write-ahead-log mode (SQLite reports journal mode \
         {mode:?}); expected a local file system that supports shared memory",
        .path.display()
    )]
    NotWal { path: PathBuf, mode: String },

    #[error(
        "the exemption store {} has schema version {found}; expected at most {supported}, so it \
         was written by a newer smtpguard",
        .path.display()
    )]
    SchemaTooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
    },

    /// A stored value cannot be read back (the file was edited by hand or damaged).
    #[error(
        "the exemption store {} holds {table}.{column} = {value:?}; expected {expected}",
        .path.display()
    )]
    InvalidStoredValue {
        path: PathBuf,
        table: &'static str,
        column: &'static str,
        value: String,
        expected: &'static str,
    },

    #[error(
        "{kind} prefix {prefix} has host bits set; expected the network address {network}",
        network = .prefix.trunc()
    )]
    HostBits { kind: EntryKind, prefix: IpNet },

    #[error("exemption {prefix} has an empty reason; expected a short note on why it is exempt")]
    EmptyReason { prefix: IpNet },

    #[error(
        "{field} {value:?} contains the control character U+{:04X} at byte {offset}; expected \
         text without control characters",
        u32::from(*.character)
    )]
    ControlCharacter {
        field: &'static str,
        value: String,
        character: char,
        offset: usize,
    },

    #[error("{field} is {len} bytes long; expected at most {max} bytes", max = MAX_TEXT_BYTES)]
    TooLong { field: &'static str, len: usize },

    #[error(
        "exemption {prefix} would expire at {}, which is not after the current time {}; \
         expected an expiry in the future",
        describe_time(*.expires),
        describe_time(*.now)
    )]
    ExpiryNotInFuture {
        prefix: IpNet,
        expires: SystemTime,
        now: SystemTime,
    },

    #[error(
        "the exemption of subscriber {subscriber:?} would expire at {}, not after now ({}); \
         expected an expiry in the future",
        describe_time(*.expires),
        describe_time(*.now)
    )]
    SubscriberExpiryNotInFuture {
        subscriber: String,
        expires: SystemTime,
        now: SystemTime,
    },

    #[error(
        "{field} {} is out of range; expected a time from 1970-01-01T00:00:00Z to \
         9999-12-31T23:59:59Z",
        describe_time(*.time)
    )]
    TimeOutOfRange {
        field: &'static str,
        time: SystemTime,
    },

    #[error(
        "bound prefix {prefix} has host bits set; expected the network address {network}",
        network = .prefix.trunc()
    )]
    BoundHostBits { prefix: IpNet },

    #[error("an empty subscriber identity; expected the customer's identity, such as a user name")]
    EmptySubscriber,

    #[error(
        "subscriber is {len} bytes long; expected at most {max} bytes (a RADIUS attribute)",
        max = MAX_SUBSCRIBER_BYTES
    )]
    SubscriberTooLong { len: usize },

    #[error(
        "subscriber exemption {subscriber:?} has an empty reason; expected a short note on why \
         it is exempt"
    )]
    EmptySubscriberReason { subscriber: String },

    #[error(
        "subscriber {subscriber:?} is already exempt; expected an identity not yet listed \
         (remove it first)"
    )]
    DuplicateSubscriber { subscriber: String },

    #[error(
        "subscriber {subscriber:?} is not exempt; expected an identity listed by `smtpguard \
         exempt list`"
    )]
    NoSubscriberExemption { subscriber: String },

    #[error("{host} has no active escalation; expected a host listed by `smtpguard escalations`")]
    NoEscalation { host: std::net::IpAddr },

    #[error("{kind} {prefix} already exists; expected a prefix not yet listed (remove it first)")]
    Duplicate { kind: EntryKind, prefix: IpNet },

    #[error(
        "there is no {kind} {prefix}; expected a prefix exactly as listed (not an address or a \
         range inside it)"
    )]
    NotFound { kind: EntryKind, prefix: IpNet },
}

impl Store {
    /// Opens (creating if needed) `state_dir/smtpguard.db`; creates `state_dir` (mode 0750) if
    /// missing. WAL journal, `synchronous=FULL` (every committed change survives a crash or
    /// `kill -9`), a [`BUSY_TIMEOUT`] busy timeout, foreign keys on; migrates the schema.
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        create_state_dir(state_dir)?;
        let path = state_dir.join(DB_FILE_NAME);
        // SQLite would create the file 0644 less the umask; made here first, it gets exactly
        // STATE_FILE_MODE, and SQLite gives the `-wal` and `-shm` files the same mode. An
        // existing path is left to SQLite, which names what is wrong with it (a folder, a
        // read-only file it opens read-only).
        if !path.exists() {
            create_private_file(&path).map_err(|source| StoreError::CreateFile {
                path: path.clone(),
                source,
            })?;
        }
        let conn = Connection::open(&path).map_err(sql(&path))?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(sql(&path))?;
        let mut store = Store { conn, path };
        // Switching a new database to WAL upgrades a read lock to an exclusive one, and SQLite
        // does not run the busy handler for such upgrades: when several processes open a new
        // store at once, the losers get SQLITE_BUSY at once. Retry them until the timeout.
        let deadline = Instant::now() + BUSY_TIMEOUT;
        let mut pause = Duration::from_millis(1);
        loop {
            match store.prepare() {
                Err(StoreError::Locked { .. }) if Instant::now() < deadline => {
                    thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
                Err(err) => return Err(err),
                Ok(()) => return Ok(store),
            }
        }
    }

    /// Opens `state_dir/smtpguard.db` for reading only, for a CLI reading the store while no
    /// agent runs (`audit`): nothing is created, migrated or written. A store of a newer
    /// schema is refused; an older one is read as it is.
    pub fn open_read_only(state_dir: &Path) -> Result<Store, StoreError> {
        let path = state_dir.join(DB_FILE_NAME);
        let conn = Connection::open_with_flags(
            &path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|source| StoreError::Open {
            path: path.clone(),
            source,
        })?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(sql(&path))?;
        let found = user_version(&conn).map_err(sql(&path))?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew {
                path,
                found,
                supported: SCHEMA_VERSION,
            });
        }
        Ok(Store { conn, path })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sets the connection's pragmas and brings the schema up to date.
    fn prepare(&mut self) -> Result<(), StoreError> {
        let path = &self.path;
        let mode: String = self
            .conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(sql(path))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::NotWal {
                path: path.clone(),
                mode,
            });
        }
        self.conn
            .pragma_update(None, "synchronous", "FULL")
            .map_err(sql(path))?;
        self.conn
            .pragma_update(None, "foreign_keys", true)
            .map_err(sql(path))?;

        let too_new = |found: i64| StoreError::SchemaTooNew {
            path: path.clone(),
            found,
            supported: SCHEMA_VERSION,
        };
        match user_version(&self.conn).map_err(sql(path))? {
            SCHEMA_VERSION => return Ok(()),
            found if found > SCHEMA_VERSION => return Err(too_new(found)),
            _ => {}
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql(path))?;
        // Another process may have migrated since the check above.
        let found = user_version(&tx).map_err(sql(path))?;
        if found > SCHEMA_VERSION {
            return Err(too_new(found));
        }
        let applied = usize::try_from(found).unwrap_or(0);
        for migration in &MIGRATIONS[applied..] {
            match migration {
                Migration::Sql(batch) => tx.execute_batch(batch).map_err(sql(path))?,
                Migration::Code(migrate) => migrate(&tx, path)?,
            }
        }
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(sql(path))?;
        tx.commit().map_err(sql(path))
    }

    /// Removes the row of exactly `prefix` from `table` and records its removal by `who`, in
    /// one transaction; returns what was removed. Fails with [`StoreError::NotFound`] if there
    /// is none.
    fn remove_prefix<T>(
        &mut self,
        table: &PrefixTable<T>,
        prefix: IpNet,
        who: &str,
        now: SystemTime,
    ) -> Result<T, StoreError> {
        let now_ms = to_millis("now", now)?;
        check_prefix(table.kind, prefix)?;
        check_text("who", who)?;
        let text = prefix.to_string();
        self.write(|tx, path| {
            let removed = (table.select)(tx, path, "prefix = ?1", &text)?
                .pop()
                .ok_or(StoreError::NotFound {
                    kind: table.kind,
                    prefix,
                })?;
            tx.execute(
                &format!("DELETE FROM {} WHERE prefix = ?1", table.name),
                [&text],
            )
            .map_err(sql(path))?;
            let detail = (table.describe)(&removed);
            audit::insert_audit(tx, path, now_ms, table.removed, &text, who, &detail)?;
            Ok(removed)
        })
    }

    /// Runs `change` in one `BEGIN IMMEDIATE` transaction, committed only if it succeeds.
    fn write<T>(
        &mut self,
        change: impl FnOnce(&Transaction<'_>, &Path) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let path = &self.path;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql(path))?;
        let value = change(&tx, path)?;
        tx.commit().map_err(sql(path))?;
        Ok(value)
    }
}

fn user_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.pragma_query_value(None, "user_version", |row| row.get(0))
}

/// Opens `path` for reading and writing, creating it with exactly [`STATE_FILE_MODE`] whatever
/// the umask if it does not exist. An existing file keeps its mode: an operator's choice.
pub fn create_private_file(path: &Path) -> std::io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    match fs::File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(STATE_FILE_MODE)
        .open(path)
    {
        Ok(file) => {
            // The umask may have taken bits away (0077 takes the group's read).
            file.set_permissions(fs::Permissions::from_mode(STATE_FILE_MODE))?;
            Ok(file)
        }
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
            fs::File::options().read(true).write(true).open(path)
        }
        Err(error) => Err(error),
    }
}

/// Creates `state_dir` with exactly mode 0750 (whatever the umask) if it is missing; an
/// existing folder keeps its mode.
pub fn create_state_dir(state_dir: &Path) -> Result<(), StoreError> {
    if state_dir.is_dir() {
        return Ok(());
    }
    let error = |source| StoreError::CreateStateDir {
        path: state_dir.to_path_buf(),
        source,
    };
    DirBuilder::new()
        .recursive(true)
        .mode(STATE_DIR_MODE)
        .create(state_dir)
        .map_err(error)?;
    // Exactly 0750 whatever the umask.
    fs::set_permissions(state_dir, fs::Permissions::from_mode(STATE_DIR_MODE)).map_err(error)
}

/// Maps an SQLite error on the database at `path` to the matching [`StoreError`].
fn sql(path: &Path) -> impl FnOnce(rusqlite::Error) -> StoreError + '_ {
    move |source| {
        let path = path.to_path_buf();
        let code = source.sqlite_error_code();
        if matches!(
            code,
            Some(ErrorCode::ReadOnly | ErrorCode::SystemIoFailure | ErrorCode::CannotOpen)
        ) && on_read_only_file_system(&path)
        {
            return StoreError::ReadOnlyFileSystem { path, source };
        }
        match code {
            Some(ErrorCode::ReadOnly) => StoreError::ReadOnly { path, source },
            Some(ErrorCode::DiskFull) => StoreError::DiskFull { path, source },
            Some(ErrorCode::CannotOpen | ErrorCode::PermissionDenied) => {
                StoreError::Open { path, source }
            }
            Some(ErrorCode::SystemIoFailure | ErrorCode::NoLargeFileSupport) => {
                StoreError::Io { path, source }
            }
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
                StoreError::Locked { path, source }
            }
            Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => {
                StoreError::Corrupt { path, source }
            }
            _ => StoreError::Sqlite { path, source },
        }
    }
}

/// Whether the file system holding the database at `path` refuses writes as read-only. Asked
/// by trying: ext4 made read-only by an error refuses writes with EROFS while its mount
/// options still say rw.
fn on_read_only_file_system(path: &Path) -> bool {
    let probe = path.with_file_name(".smtpguard-write-check");
    match fs::File::create(&probe) {
        Ok(_) => {
            let _ = fs::remove_file(&probe);
            false
        }
        Err(error) => error.kind() == std::io::ErrorKind::ReadOnlyFilesystem,
    }
}

/// An optional text field in an audit detail: quoted, or `none`.
fn quoted_or_none(text: Option<&str>) -> String {
    text.map_or_else(|| "none".to_owned(), |text| format!("{text:?}"))
}

/// Runs `query` with `params` and reads every row it gives with `read`.
fn query_all<T>(
    conn: &Connection,
    path: &Path,
    query: &str,
    params: impl rusqlite::Params,
    read: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> Result<Vec<T>, StoreError> {
    let mut statement = conn.prepare(query).map_err(sql(path))?;
    statement
        .query_map(params, read)
        .map_err(sql(path))?
        .collect::<rusqlite::Result<Vec<T>>>()
        .map_err(sql(path))
}

/// Rejects a prefix with host bits set.
pub(crate) fn check_prefix(kind: EntryKind, prefix: IpNet) -> Result<(), StoreError> {
    if prefix.trunc() == prefix {
        Ok(())
    } else {
        Err(StoreError::HostBits { kind, prefix })
    }
}

/// Rejects text longer than [`MAX_TEXT_BYTES`] or holding a control character (or another
/// unprintable one, as [`crate::input`] defines them).
pub(crate) fn check_text(field: &'static str, value: &str) -> Result<(), StoreError> {
    if value.len() > MAX_TEXT_BYTES {
        return Err(StoreError::TooLong {
            field,
            len: value.len(),
        });
    }
    match crate::input::first_unprintable(value) {
        Some((offset, character)) => Err(StoreError::ControlCharacter {
            field,
            value: value.to_owned(),
            character,
            offset,
        }),
        None => Ok(()),
    }
}

/// A prefix's stored columns: canonical text, family, network address bytes, length.
struct PrefixColumns {
    text: String,
    family: i64,
    address: Vec<u8>,
    length: i64,
}

impl PrefixColumns {
    fn new(prefix: IpNet) -> Self {
        let (family, address) = match prefix {
            IpNet::V4(net) => (4, net.network().octets().to_vec()),
            IpNet::V6(net) => (6, net.network().octets().to_vec()),
        };
        PrefixColumns {
            text: prefix.to_string(),
            family,
            address,
            length: i64::from(prefix.prefix_len()),
        }
    }
}

/// Reads a table's rows matching a filter on `?1` (bound to the text given), in prefix order.
type SelectRows<T> = fn(&Connection, &Path, &str, &str) -> Result<Vec<T>, StoreError>;

/// A table of prefixes (exemptions, runtime relays): what the shared operations need to know.
struct PrefixTable<T> {
    kind: EntryKind,
    name: &'static str,
    /// The audit action of a removal.
    removed: AuditAction,
    select: SelectRows<T>,
    /// The audit detail of a row.
    describe: fn(&T) -> String,
}

impl<T> PrefixTable<T> {
    /// Fails with [`StoreError::Duplicate`] if the table already holds exactly this prefix.
    fn refuse_duplicate(
        &self,
        tx: &Transaction<'_>,
        path: &Path,
        columns: &PrefixColumns,
        prefix: IpNet,
    ) -> Result<(), StoreError> {
        let exists = tx
            .query_row(
                &format!("SELECT 1 FROM {} WHERE prefix = ?1", self.name),
                [&columns.text],
                |_| Ok(()),
            )
            .optional()
            .map_err(sql(path))?;
        match exists {
            Some(()) => Err(StoreError::Duplicate {
                kind: self.kind,
                prefix,
            }),
            None => Ok(()),
        }
    }
}

/// The `ORDER BY` clause giving the listing order of prefixes.
const PREFIX_ORDER: &str = "family, address, length";

fn parse_stored_prefix(
    path: &Path,
    table: &'static str,
    text: String,
) -> Result<IpNet, StoreError> {
    match text.parse::<IpNet>() {
        Ok(prefix) if prefix.trunc() == prefix => Ok(prefix),
        _ => Err(StoreError::InvalidStoredValue {
            path: path.to_path_buf(),
            table,
            column: "prefix",
            value: text,
            expected: "a CIDR prefix without host bits",
        }),
    }
}

/// Converts a time to stored Unix milliseconds (sub-millisecond parts are dropped).
pub(crate) fn to_millis(field: &'static str, time: SystemTime) -> Result<i64, StoreError> {
    time.duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|since| i64::try_from(since.as_millis()).ok())
        .filter(|ms| *ms <= MAX_MILLIS)
        .ok_or(StoreError::TimeOutOfRange { field, time })
}

/// The time of stored Unix milliseconds, if in range.
pub(crate) fn from_millis(ms: i64) -> Option<SystemTime> {
    if (0..=MAX_MILLIS).contains(&ms) {
        Some(UNIX_EPOCH + Duration::from_millis(ms.unsigned_abs()))
    } else {
        None
    }
}

fn stored_time(
    path: &Path,
    table: &'static str,
    column: &'static str,
    ms: i64,
) -> Result<SystemTime, StoreError> {
    from_millis(ms).ok_or_else(|| StoreError::InvalidStoredValue {
        path: path.to_path_buf(),
        table,
        column,
        value: ms.to_string(),
        expected: "Unix milliseconds from 0 to 253402300799999 (year 9999)",
    })
}

/// `expires` in whole milliseconds (what reading it back gives), refused with the error
/// `refused` makes unless it is after `now_ms`.
fn future_time(
    expires: SystemTime,
    now_ms: i64,
    refused: impl FnOnce() -> StoreError,
) -> Result<SystemTime, StoreError> {
    let ms = to_millis("expires", expires)?;
    if ms <= now_ms {
        return Err(refused());
    }
    Ok(from_millis(ms).unwrap_or(expires))
}

/// [`stored_time`] of a column that may be NULL.
fn stored_optional_time(
    path: &Path,
    table: &'static str,
    column: &'static str,
    ms: Option<i64>,
) -> Result<Option<SystemTime>, StoreError> {
    ms.map(|ms| stored_time(path, table, column, ms))
        .transpose()
}

/// RFC 3339 UTC, to the second, if the time is in the storable range.
fn rfc3339(time: SystemTime) -> Option<String> {
    to_millis("time", time)
        .ok()
        .map(|_| humantime::format_rfc3339_seconds(time).to_string())
}

/// RFC 3339 when possible, else the distance from the Unix epoch (for error messages).
fn describe_time(time: SystemTime) -> String {
    if let Some(text) = rfc3339(time) {
        return text;
    }
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => format!("{} seconds after 1970-01-01T00:00:00Z", after.as_secs()),
        Err(before) => format!(
            "{} seconds before 1970-01-01T00:00:00Z",
            before.duration().as_secs()
        ),
    }
}

pub(crate) fn serialize_time<S: Serializer>(
    time: &SystemTime,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match rfc3339(*time) {
        Some(text) => serializer.serialize_str(&text),
        None => Err(serde::ser::Error::custom(format_args!(
            "time {} cannot be written as RFC 3339",
            describe_time(*time)
        ))),
    }
}

pub(crate) fn serialize_optional_time<S: Serializer>(
    time: &Option<SystemTime>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match time {
        Some(time) => serialize_time(time, serializer),
        None => serializer.serialize_none(),
    }
}

fn serialize_prefix<S: Serializer>(prefix: &IpNet, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(prefix)
}

/// Test helpers shared by the submodules' tests.
#[cfg(test)]
mod testing {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use ipnet::IpNet;

    use super::Store;

    /// A fresh store in its own temporary state directory (kept alive by the returned guard).
    pub(super) fn temp_store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("creating a temporary directory");
        let store = Store::open(dir.path()).expect("opening a new store");
        (dir, store)
    }

    pub(super) fn net(text: &str) -> IpNet {
        text.parse().expect("a valid prefix")
    }

    /// `secs` seconds after the Unix epoch.
    pub(super) fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    /// A plausible "now": 2023-11-14T22:13:20Z.
    pub(super) const NOW: u64 = 1_700_000_000;
}

#[cfg(test)]
mod tests {
    use std::fs::{self, OpenOptions};
    use std::io;
    use std::os::unix::fs::PermissionsExt as _;
    use std::sync::{Arc, Barrier};
    use std::thread;

    use super::testing::{NOW, at, net, temp_store};
    use super::*;

    fn exemption(prefix: &str, who: &str) -> NewExemption {
        NewExemption {
            prefix: net(prefix),
            reason: "business line with its own mail server".to_owned(),
            ticket: None,
            who: who.to_owned(),
            expires: None,
        }
    }

    #[test]
    fn open_creates_the_state_dir_with_mode_0750_and_sets_the_pragmas() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("var/lib/smtpguard");
        let store = Store::open(&state).unwrap();
        let mode = fs::metadata(&state).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o750, "state dir mode {mode:o}");
        assert_eq!(store.path(), state.join(DB_FILE_NAME));
        assert!(state.join(DB_FILE_NAME).is_file());
        // The database and SQLite's WAL and shared-memory files: private to the agent's user
        // and group (the test runs with the umask of its shell, usually 0022).
        for name in ["smtpguard.db", "smtpguard.db-wal", "smtpguard.db-shm"] {
            let mode = fs::metadata(state.join(name)).unwrap().permissions().mode() & 0o7777;
            assert_eq!(mode, STATE_FILE_MODE, "{name} mode {mode:o}");
        }

        let pragma = |name: &str| -> String {
            store
                .conn
                .pragma_query_value(None, name, |row| row.get::<_, rusqlite::types::Value>(0))
                .map(|value| match value {
                    rusqlite::types::Value::Integer(n) => n.to_string(),
                    rusqlite::types::Value::Text(text) => text,
                    other => format!("{other:?}"),
                })
                .unwrap()
        };
        assert_eq!(pragma("journal_mode"), "wal");
        assert_eq!(pragma("synchronous"), "2", "2 is FULL");
        assert_eq!(pragma("foreign_keys"), "1");
        assert_eq!(pragma("busy_timeout"), "5000");
        assert_eq!(pragma("user_version"), SCHEMA_VERSION.to_string());
    }

    #[test]
    fn open_leaves_an_existing_state_dir_mode_alone() {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).unwrap();
        Store::open(dir.path()).unwrap();
        let mode = fs::metadata(dir.path()).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn durability_everything_is_there_after_reopening_and_the_journal_is_wal() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let added = store
            .add_exemption(
                &NewExemption {
                    ticket: Some("OPS-7".to_owned()),
                    expires: Some(at(NOW + 3600)),
                    ..exemption("198.51.100.0/24", "alice")
                },
                at(NOW),
            )
            .unwrap();
        let relay = store
            .add_relay(
                &NewRelay {
                    prefix: net("192.0.2.25/32"),
                    note: Some("smarthost".to_owned()),
                    who: "bob".to_owned(),
                },
                at(NOW + 1),
            )
            .unwrap();
        let trail = store.audit(None).unwrap();
        assert_eq!(trail.len(), 2);
        drop(store);

        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.exemptions().unwrap(), vec![added]);
        assert_eq!(store.relays().unwrap(), vec![relay]);
        assert_eq!(store.audit(None).unwrap(), trail);
        let mode: String = store
            .conn
            .pragma_query_value(None, "journal_mode", |row| row.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn a_state_dir_that_cannot_be_created_is_named() {
        let dir = tempfile::tempdir().unwrap();
        // A regular file where a directory should be: fails even for root.
        let file = dir.path().join("not-a-dir");
        fs::write(&file, "").unwrap();
        let state = file.join("state");
        let err = Store::open(&state).unwrap_err();
        assert!(
            matches!(&err, StoreError::CreateStateDir { path, .. } if *path == state),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(
            message.starts_with(&format!(
                "cannot create the state directory {}: ",
                state.display()
            )),
            "{message}"
        );
    }

    #[test]
    fn a_database_path_that_cannot_be_opened_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join(DB_FILE_NAME);
        fs::create_dir(&db).unwrap();
        let err = Store::open(dir.path()).unwrap_err();
        assert!(
            matches!(&err, StoreError::Open { path, .. } if *path == db),
            "{err:?}"
        );
        assert!(
            err.to_string().starts_with(&format!(
                "cannot open the exemption store {}: ",
                db.display()
            )),
            "{err}"
        );
    }

    #[test]
    fn a_file_that_is_not_a_database_is_reported_as_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join(DB_FILE_NAME);
        fs::write(&db, vec![b'x'; 8192]).unwrap();
        let err = Store::open(dir.path()).unwrap_err();
        assert!(
            matches!(&err, StoreError::Corrupt { path, .. } if *path == db),
            "{err:?}"
        );
    }

    #[test]
    fn a_schema_newer_than_this_build_is_refused() {
        let (dir, store) = temp_store();
        store
            .conn
            .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(store);
        let err = Store::open(dir.path()).unwrap_err();
        assert!(
            matches!(err, StoreError::SchemaTooNew { found, supported, .. }
                if found == SCHEMA_VERSION + 1 && supported == SCHEMA_VERSION),
            "{err:?}"
        );
    }

    /// Removes CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the calling thread's effective
    /// capabilities, so that file permission bits apply to it even when it runs as root.
    /// Linux capabilities belong to each thread, and the raw `capset` system call (unlike glibc's
    /// `setuid`) changes only the caller, so other tests are unaffected.
    fn respect_file_permissions_in_this_thread() -> io::Result<()> {
        #[repr(C)]
        struct Header {
            version: u32,
            pid: libc::c_int,
        }
        #[repr(C)]
        #[derive(Clone, Copy, Default)]
        struct Data {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
        const CAP_DAC_OVERRIDE: u32 = 1;
        const CAP_DAC_READ_SEARCH: u32 = 2;

        // pid 0: the calling thread.
        let mut header = Header {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        let mut data = [Data::default(); 2];
        // SAFETY: with version 3, capget reads one header and writes two data structs, which
        // is what the pointers point to.
        let got = unsafe { libc::syscall(libc::SYS_capget, &raw mut header, data.as_mut_ptr()) };
        if got != 0 {
            return Err(io::Error::last_os_error());
        }
        data[0].effective &= !((1 << CAP_DAC_OVERRIDE) | (1 << CAP_DAC_READ_SEARCH));
        // SAFETY: as above; capset only reads both.
        let set = unsafe { libc::syscall(libc::SYS_capset, &raw mut header, data.as_ptr()) };
        if set != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The read-only case the CLI must explain: the database file is mode 0444.
    ///
    /// Tests run as root, and root's CAP_DAC_OVERRIDE ignores permission bits, so a plain
    /// `chmod 0444` would not make the file read-only for the test. Of the ways around that,
    /// opening with SQLite's read-only flag would skip the real path (SQLite's failed read-write
    /// `open(2)` and its fall-back to read-only), `chattr +i` needs a file system that supports
    /// it, and a read-only bind mount needs mount privileges and changes the whole machine. So
    /// this test drops CAP_DAC_OVERRIDE in a thread of its own and runs there exactly what an
    /// unprivileged operator would hit: reopen the 0444 file, try to add. It first checks that
    /// the kernel really refuses to open the file for writing, so it cannot pass vacuously.
    #[test]
    fn a_read_only_database_gives_a_clear_error_naming_the_file() {
        let (dir, mut store) = temp_store();
        let before = store
            .add_exemption(&exemption("203.0.113.0/24", "alice"), at(NOW))
            .unwrap();
        drop(store);
        let db = dir.path().join(DB_FILE_NAME);
        fs::set_permissions(&db, fs::Permissions::from_mode(0o444)).unwrap();

        let state = dir.path().to_path_buf();
        let (err, listed) = thread::spawn(move || {
            respect_file_permissions_in_this_thread().expect("dropping CAP_DAC_OVERRIDE");
            let refused = OpenOptions::new().write(true).open(&db).unwrap_err();
            assert_eq!(refused.kind(), io::ErrorKind::PermissionDenied);

            let mut store = Store::open(&state).expect("a read-only store still opens");
            let err = store
                .add_exemption(&exemption("203.0.114.0/24", "alice"), at(NOW + 1))
                .unwrap_err();
            (err, store.exemptions().unwrap())
        })
        .join()
        .unwrap();

        let db = dir.path().join(DB_FILE_NAME);
        assert!(
            matches!(&err, StoreError::ReadOnly { path, .. } if *path == db),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!(
                "cannot write the exemption store {}: attempt to write a readonly database",
                db.display()
            )
        );
        assert_eq!(listed, vec![before]);
    }

    /// SQLITE_FULL, simulated with `max_page_count` (a real full disk is impractical in a test):
    /// the write fails with [`StoreError::DiskFull`] and leaves neither row nor audit entry.
    #[test]
    fn a_full_disk_gives_a_clear_error_and_stores_nothing() {
        let (_dir, mut store) = temp_store();
        let pages: i64 = store
            .conn
            .pragma_query_value(None, "page_count", |row| row.get(0))
            .unwrap();
        store
            .conn
            .pragma_update(None, "max_page_count", pages)
            .unwrap();
        let long_reason = "r".repeat(MAX_TEXT_BYTES);
        let mut added = 0;
        let err = loop {
            let new = NewExemption {
                reason: long_reason.clone(),
                ..exemption(&format!("10.{}.{}.0/24", added / 256, added % 256), "alice")
            };
            match store.add_exemption(&new, at(NOW)) {
                Ok(_) => added += 1,
                Err(err) => break err,
            }
            assert!(added < 10_000, "the page limit never hit");
        };
        assert!(
            matches!(&err, StoreError::DiskFull { path, .. } if path == store.path()),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!(
                "cannot write the exemption store {}: database or disk is full; expected free \
                 space on its file system",
                store.path().display()
            )
        );
        assert_eq!(store.exemptions().unwrap().len(), added);
        assert_eq!(store.audit(None).unwrap().len(), added);
    }

    /// 50 processes' worth of connections open a new store at once and each adds an exemption:
    /// WAL, the busy timeout and the retried WAL switch let every one of them through.
    #[test]
    fn fifty_concurrent_writers_all_succeed() {
        const WRITERS: usize = 50;
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let start = Arc::new(Barrier::new(WRITERS));
        let writers: Vec<_> = (0..WRITERS)
            .map(|i| {
                let state = state.clone();
                let start = Arc::clone(&start);
                thread::spawn(move || {
                    start.wait();
                    let mut store = Store::open(&state)?;
                    store.add_exemption(
                        &exemption(&format!("10.0.{i}.0/24"), &format!("w{i}")),
                        at(NOW),
                    )
                })
            })
            .collect();
        for writer in writers {
            writer.join().unwrap().unwrap();
        }

        let store = Store::open(&state).unwrap();
        let listed = store.exemptions().unwrap();
        let expected: Vec<IpNet> = (0..WRITERS)
            .map(|i| net(&format!("10.0.{i}.0/24")))
            .collect();
        assert_eq!(
            listed.iter().map(|e| e.prefix).collect::<Vec<_>>(),
            expected
        );
        let trail = store.audit(None).unwrap();
        assert_eq!(trail.len(), WRITERS);
        assert!(
            trail
                .iter()
                .all(|entry| entry.action == AuditAction::ExemptionAdded)
        );
        let mut subjects: Vec<_> = trail.iter().map(|entry| net(&entry.subject)).collect();
        subjects.sort();
        assert_eq!(subjects, expected);
    }

    #[test]
    fn times_round_trip_through_milliseconds() {
        let time = at(NOW) + Duration::from_nanos(123_456_789);
        let ms = to_millis("now", time).unwrap();
        assert_eq!(ms, 1_700_000_000_123);
        assert_eq!(from_millis(ms), Some(at(NOW) + Duration::from_millis(123)));
        assert!(matches!(
            to_millis("now", UNIX_EPOCH - Duration::from_secs(1)),
            Err(StoreError::TimeOutOfRange { field: "now", .. })
        ));
        assert!(to_millis("now", UNIX_EPOCH + Duration::from_millis(MAX_MILLIS as u64)).is_ok());
        assert!(
            to_millis(
                "now",
                UNIX_EPOCH + Duration::from_millis(MAX_MILLIS as u64 + 1)
            )
            .is_err()
        );
        assert_eq!(from_millis(-1), None);
        assert_eq!(
            describe_time(UNIX_EPOCH - Duration::from_secs(5)),
            "5 seconds before 1970-01-01T00:00:00Z"
        );
    }

    #[test]
    fn out_of_range_times_are_rejected_and_store_nothing() {
        let (_dir, mut store) = temp_store();
        let err = store
            .add_exemption(
                &exemption("10.0.0.0/8", "alice"),
                UNIX_EPOCH - Duration::from_secs(1),
            )
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "now 1 seconds before 1970-01-01T00:00:00Z is out of range; expected a time from \
             1970-01-01T00:00:00Z to 9999-12-31T23:59:59Z"
        );
        assert!(store.exemptions().unwrap().is_empty());
        assert!(store.audit(None).unwrap().is_empty());
    }
}
