//! The fleet's reports in PostgreSQL: the connection, the schema (created and migrated by the
//! agents, versioned), the idempotent write of a snapshot's per-host interval records, and the
//! reads of a report's window.
//!
//! A snapshot is stored as the local store keeps it: chunks of [`CHUNK_HOSTS`] records sorted
//! by host, each chunk one row keyed on (gateway, interval start, chunk) with its records in
//! one `bytea` (the local store's layout) and beside them a narrow `keys` column of each
//! record's host and attempts (see `keys`). Writing an interval deletes its chunks and copies the new ones
//! in one transaction, so sending it again (after a lost answer) rewrites the same rows
//! instead of counting them twice. A report with `--top` reads the narrow column of its window
//! to sum each host's attempts, then the records of the chunks that hold its rows' hosts only.

use std::{
    pin::pin,
    time::{Duration, SystemTime},
};

use futures_util::TryStreamExt as _;
use smtpguard_common::sketch::EXACT_DESTINATIONS;
use tokio_postgres::{
    binary_copy::{BinaryCopyInWriter, BinaryCopyOutStream},
    types::{ToSql, Type},
};

use super::{keys, postgres_tls};
use crate::{
    config::{PostgresConfig, PostgresTls},
    store::{HostInterval, decode_records, from_millis, put_limited, put_record, to_millis},
};

/// Schema migrations; `MIGRATIONS[i]` takes the schema from version `i` to `i + 1`. Append,
/// never edit a released one (as the local store's).
const MIGRATIONS: &[&str] = &[
    // 1: per-host interval records of every gateway.
    "CREATE TABLE host_intervals (
         gateway       text     NOT NULL,
         start_ms      bigint   NOT NULL,
         end_ms        bigint   NOT NULL CHECK (end_ms > start_ms),
         host          bytea    NOT NULL CHECK (length(host) = 16),
         first_seen_ms bigint   NOT NULL,
         last_seen_ms  bigint   NOT NULL,
         attempts      bigint   NOT NULL,
         segments      bigint   NOT NULL,
         dropped       bigint   NOT NULL,
         sketch        bytea    NOT NULL,
         last_dst      bytea    NOT NULL,
         last_port     integer  NOT NULL,
         last_reason   integer  NOT NULL,
         PRIMARY KEY (gateway, start_ms, host)
     );
     CREATE INDEX host_intervals_end ON host_intervals (end_ms);",
    // 2: the interval's distinct destinations exactly while they fitted the kernel's exact
    // set (NULL when they did not), so the fleet report counts as exactly as the local one.
    "ALTER TABLE host_intervals ADD COLUMN exact_destinations bytea
         CHECK (exact_destinations IS NULL OR length(exact_destinations) = 20);",
    // 3: snapshots in chunks (see the module's comment); `Reports::migrate` moves the rows of
    // version 2 into them and drops `host_intervals`. The chunks are stored out of line, so
    // that `keys` is read without touching `records`, and uncompressed: compression would add
    // its CPU time to every ingest (not measured against the disk it would save).
    "CREATE TABLE host_chunks (
         gateway    text     NOT NULL,
         start_ms   bigint   NOT NULL,
         end_ms     bigint   NOT NULL CHECK (end_ms > start_ms),
         chunk      integer  NOT NULL CHECK (chunk >= 0),
         hosts      integer  NOT NULL CHECK (hosts > 0),
         keys       bytea    NOT NULL CHECK (length(keys) >= hosts * 2),
         records    bytea    NOT NULL CHECK (length(records) = hosts * 140),
         exact_sets bytea    NOT NULL CHECK (length(exact_sets) = hosts * 21),
         PRIMARY KEY (gateway, start_ms, chunk)
     );
     CREATE INDEX host_chunks_end ON host_chunks (end_ms);
     ALTER TABLE host_chunks ALTER COLUMN keys SET STORAGE EXTERNAL,
         ALTER COLUMN records SET STORAGE EXTERNAL,
         ALTER COLUMN exact_sets SET STORAGE EXTERNAL;",
    // 4: each chunk's limited attempts (`ratelimit` and `reject` buckets), as the local
    // store keeps them; NULL in chunks written before, read as 0.
    "ALTER TABLE host_chunks ADD COLUMN limited bytea
         CHECK (limited IS NULL OR length(limited) = hosts * 4);
     ALTER TABLE host_chunks ALTER COLUMN limited SET STORAGE EXTERNAL;",
];

/// The version whose migration moves version 2's rows into chunks.
const CHUNKED: usize = 3;

/// Records per chunk, as in the local store: a million-host snapshot is about 250 rows.
const CHUNK_HOSTS: usize = 4096;

/// A chunk's columns in COPY order, with their types.
const CHUNK_COLUMNS: &str =
    "gateway, start_ms, end_ms, chunk, hosts, keys, records, exact_sets, limited";
const CHUNK_TYPES: [Type; 9] = [
    Type::TEXT,
    Type::INT8,
    Type::INT8,
    Type::INT4,
    Type::INT4,
    Type::BYTEA,
    Type::BYTEA,
    Type::BYTEA,
    Type::BYTEA,
];

/// Version 2's columns in COPY order, with their types: read once, by the migration to chunks.
const LEGACY_COLUMNS: &str = "gateway, start_ms, end_ms, host, first_seen_ms, last_seen_ms, \
                              attempts, segments, dropped, sketch, last_dst, last_port, \
                              last_reason, exact_destinations";
const LEGACY_TYPES: [Type; 14] = [
    Type::TEXT,
    Type::INT8,
    Type::INT8,
    Type::BYTEA,
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::BYTEA,
    Type::BYTEA,
    Type::INT4,
    Type::INT4,
    Type::BYTEA,
];

/// An arbitrary, fixed key of the advisory lock that lets one agent migrate at a time.
const MIGRATION_LOCK: i64 = 0x736d_7470_6775_6172;

/// How long connecting may take before PostgreSQL counts as unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// What went wrong talking to PostgreSQL, naming the server.
#[derive(Debug, thiserror::Error)]
pub enum PostgresError {
    #[error("PostgreSQL {server} is unreachable: {cause}")]
    Unreachable { server: String, cause: String },
    #[error("PostgreSQL {server} refused {what}: {cause}")]
    Refused {
        server: String,
        what: String,
        cause: String,
    },
    #[error(
        "PostgreSQL {server} holds smtpguard schema version {found}, newer than this version's \
         {supported}; upgrade this gateway"
    )]
    TooNew {
        server: String,
        found: i32,
        supported: i32,
    },
    #[error("a stored time of PostgreSQL {server} is out of range: {ms} ms")]
    BadTime { server: String, ms: i64 },
    #[error(transparent)]
    Tls(#[from] postgres_tls::TlsFileError),
    #[error("cannot read postgres_password_file {path}: {source}")]
    Password {
        path: String,
        source: std::io::Error,
    },
}

/// `host:port/database` of a connection string, for messages (never its password).
pub fn server_name(config: &PostgresConfig) -> String {
    let Ok(parsed) = config.url.parse::<tokio_postgres::Config>() else {
        return "(unparsable connection string)".to_owned();
    };
    let host = match parsed.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        Some(tokio_postgres::config::Host::Unix(path)) => path.display().to_string(),
        None => "localhost".to_owned(),
    };
    let port = parsed.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}/{}", parsed.get_dbname().unwrap_or_default())
}

/// Connects (the connection runs as a task on the current runtime).
pub async fn connect(config: &PostgresConfig) -> Result<tokio_postgres::Client, PostgresError> {
    let server = server_name(config);
    let mut parsed: tokio_postgres::Config =
        config
            .url
            .parse()
            .map_err(|error: tokio_postgres::Error| PostgresError::Unreachable {
                server: server.clone(),
                cause: error.to_string(),
            })?;
    if let Some(path) = &config.password_file {
        let text = std::fs::read_to_string(path).map_err(|source| PostgresError::Password {
            path: path.display().to_string(),
            source,
        })?;
        parsed.password(text.lines().next().unwrap_or_default());
    }
    parsed.connect_timeout(CONNECT_TIMEOUT);
    parsed.ssl_mode(match config.tls {
        PostgresTls::Disable => tokio_postgres::config::SslMode::Disable,
        PostgresTls::Prefer => tokio_postgres::config::SslMode::Prefer,
        PostgresTls::Require | PostgresTls::Verify { .. } => {
            tokio_postgres::config::SslMode::Require
        }
    });
    let (client, connection) = parsed
        .connect(postgres_tls::connector(config)?)
        .await
        .map_err(|error| PostgresError::Unreachable {
            server: server.clone(),
            cause: error_text(&error),
        })?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "PostgreSQL connection closed");
        }
    });
    Ok(client)
}

/// tokio-postgres' message with its database error's detail, which says what was wrong.
pub fn error_text(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => {
            let mut text = error.to_string();
            let mut source = std::error::Error::source(error);
            while let Some(cause) = source {
                text.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            text
        }
    }
}

/// `config check --connect`: connects as the agent would and says what answered.
pub fn probe(config: &PostgresConfig) -> Result<String, PostgresError> {
    let server = server_name(config);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| PostgresError::Unreachable {
            server: server.clone(),
            cause: error.to_string(),
        })?;
    runtime.block_on(async {
        let client = connect(config).await?;
        let row = client
            .query_one("SELECT version(), current_user", &[])
            .await
            .map_err(|error| PostgresError::Refused {
                server: server.clone(),
                what: "a query".to_owned(),
                cause: error_text(&error),
            })?;
        let version: String = row.get(0);
        let user: String = row.get(1);
        Ok(format!(
            "PostgreSQL {server} reached as {user}: {}",
            version.split(" on ").next().unwrap_or(&version)
        ))
    })
}

/// Turns tokio-postgres' error into one naming `server` and what it refused.
fn refusal(server: &str, what: &str) -> impl FnOnce(tokio_postgres::Error) -> PostgresError {
    let (server, what) = (server.to_owned(), what.to_owned());
    move |error| PostgresError::Refused {
        server,
        what,
        cause: error_text(&error),
    }
}

/// A connected client with the server's name for messages.
pub struct Reports {
    client: tokio_postgres::Client,
    server: String,
}

impl Reports {
    /// Connects and brings the schema to this version's (creating it on first use).
    pub async fn open(config: &PostgresConfig) -> Result<Self, PostgresError> {
        let mut reports = Self {
            client: connect(config).await?,
            server: server_name(config),
        };
        reports.migrate().await?;
        Ok(reports)
    }

    pub fn closed(&self) -> bool {
        self.client.is_closed()
    }

    async fn migrate(&mut self) -> Result<(), PostgresError> {
        let server = self.server.clone();
        let refused = |what: &'static str| refusal(&server, what);
        let tx = self
            .client
            .transaction()
            .await
            .map_err(refused("a transaction"))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(refused("the migration lock"))?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS smtpguard_schema (
                 id      integer PRIMARY KEY CHECK (id = 1),
                 version integer NOT NULL
             )",
        )
        .await
        .map_err(refused(
            "creating the schema table (does the role own the database?)",
        ))?;
        let found: i32 = tx
            .query_opt("SELECT version FROM smtpguard_schema WHERE id = 1", &[])
            .await
            .map_err(refused("reading the schema version"))?
            .map_or(0, |row| row.get(0));
        let supported = MIGRATIONS.len() as i32;
        if found > supported {
            return Err(PostgresError::TooNew {
                server,
                found,
                supported,
            });
        }
        for migration in MIGRATIONS.iter().skip(found as usize) {
            tx.batch_execute(migration).await.map_err(refused(
                "a schema migration (does the role own the database?)",
            ))?;
        }
        // Version 2's rows move once the chunks' table has every column this version writes.
        if (found as usize) < CHUNKED {
            rows_into_chunks(&tx, &server).await?;
        }
        tx.execute(
            "INSERT INTO smtpguard_schema (id, version) VALUES (1, $1)
             ON CONFLICT (id) DO UPDATE SET version = $1",
            &[&supported],
        )
        .await
        .map_err(refused("recording the schema version"))?;
        tx.commit().await.map_err(refused("the migration's commit"))
    }

    /// Writes one snapshot interval's records of `gateway` (records of several intervals are
    /// written per interval); a second call with the same records changes nothing. Returns the
    /// records written.
    pub async fn ship(
        &mut self,
        gateway: &str,
        intervals: &[HostInterval],
    ) -> Result<u64, PostgresError> {
        let server = self.server.clone();
        let tx = self
            .client
            .transaction()
            .await
            .map_err(refusal(&server, "a transaction"))?;
        write_chunks(&tx, &server, gateway, intervals).await?;
        tx.commit().await.map_err(refusal(&server, "the commit"))?;
        Ok(intervals.len() as u64)
    }

    /// The records of every gateway (or of `gateway`) whose interval ended within
    /// `[from, to]`, oldest first, each with its gateway.
    pub async fn intervals(
        &mut self,
        from: SystemTime,
        to: SystemTime,
        gateway: Option<&str>,
    ) -> Result<Vec<(String, HostInterval)>, PostgresError> {
        let window = Window::new(from, to, gateway);
        let tx = snapshot(&mut self.client, &self.server).await?;
        records(
            &tx,
            &self.server,
            &format!(
                "SELECT gateway, start_ms, end_ms, records, exact_sets, limited FROM host_chunks \
                 WHERE {WINDOW} ORDER BY end_ms, gateway, start_ms, chunk"
            ),
            &window.params(),
            |_| true,
        )
        .await
    }

    /// Like [`Self::intervals`], but of the hosts `pick` chooses (in address order) from each
    /// host's attempts within the window (in address order, summed over its gateways and
    /// intervals): only the narrow `keys` column of the window is read whole, and the records
    /// of the chunks that hold a chosen host, both in one snapshot of the database.
    pub async fn intervals_of(
        &mut self,
        from: SystemTime,
        to: SystemTime,
        gateway: Option<&str>,
        pick: impl FnOnce(&[([u8; 16], u64)]) -> Vec<[u8; 16]>,
    ) -> Result<Vec<(String, HostInterval)>, PostgresError> {
        let window = Window::new(from, to, gateway);
        let server = &self.server;
        let tx = snapshot(&mut self.client, server).await?;
        let rows = tx
            .query(
                &format!(
                    "SELECT gateway, start_ms, chunk, keys FROM host_chunks WHERE {WINDOW} \
                     ORDER BY end_ms, gateway, start_ms, chunk"
                ),
                &window.params(),
            )
            .await
            .map_err(refusal(server, READ))?;
        let chunks: Vec<ChunkKeys> = rows
            .iter()
            .map(|row| ChunkKeys {
                gateway: row.get(0),
                start_ms: row.get(1),
                chunk: row.get(2),
                keys: row.get(3),
            })
            .collect();
        // Each interval's chunks come together, in address order: one list per interval.
        let totals = keys::sum(|| {
            chunks
                .chunk_by(|a, b| (a.gateway, a.start_ms) == (b.gateway, b.start_ms))
                .map(|interval| interval.iter().flat_map(|chunk| keys::decode(chunk.keys)))
                .collect()
        });
        let hosts = pick(&totals);
        drop(totals);
        let holding = |chunk: &&ChunkKeys| {
            // A chunk's keys are in address order: look up only the chosen hosts within its
            // first and last.
            let entries: Vec<u128> = keys::decode(chunk.keys).map(|(host, _)| host).collect();
            let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
                return false;
            };
            let below = hosts.partition_point(|h| u128::from_be_bytes(*h) < *first);
            hosts[below..]
                .iter()
                .map(|h| u128::from_be_bytes(*h))
                .take_while(|h| h <= last)
                .any(|h| entries.binary_search(&h).is_ok())
        };
        let (gateways, starts, numbers): (Vec<&str>, Vec<i64>, Vec<i32>) = chunks
            .iter()
            .filter(holding)
            .map(|c| (c.gateway, c.start_ms, c.chunk))
            .collect();
        records(
            &tx,
            server,
            "SELECT gateway, start_ms, end_ms, records, exact_sets, limited FROM host_chunks \
             WHERE (gateway, start_ms, chunk) IN \
                 (SELECT * FROM unnest($1::text[], $2::bigint[], $3::integer[])) \
             ORDER BY end_ms, gateway, start_ms, chunk",
            &[&gateways, &starts, &numbers],
            |host| hosts.binary_search(host).is_ok(),
        )
        .await
    }
}

/// What a refused read of a report is.
const READ: &str = "the report's read (does the role have SELECT?)";

/// A read-only transaction that sees one snapshot of the database, so that a report's reads
/// agree while gateways ship meanwhile.
async fn snapshot<'c>(
    client: &'c mut tokio_postgres::Client,
    server: &str,
) -> Result<tokio_postgres::Transaction<'c>, PostgresError> {
    client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(refusal(server, "a read-only transaction"))
}

/// The records of the chunks `statement` selects (gateway, start, end, records, sets,
/// limited), those of the hosts `wanted` keeps, as the rows stream in.
async fn records(
    tx: &tokio_postgres::Transaction<'_>,
    server: &str,
    statement: &str,
    params: &[&(dyn ToSql + Sync)],
    wanted: impl Fn(&[u8; 16]) -> bool,
) -> Result<Vec<(String, HostInterval)>, PostgresError> {
    let rows = tx
        .query_raw(statement, params.iter().map(|p| *p as &dyn ToSql))
        .await
        .map_err(refusal(server, READ))?;
    let mut rows = pin!(rows);
    let time = |_: &'static str, ms: i64| {
        from_millis(ms).ok_or(PostgresError::BadTime {
            server: server.to_owned(),
            ms,
        })
    };
    let (mut intervals, mut records) = (Vec::new(), Vec::new());
    while let Some(row) = rows.try_next().await.map_err(refusal(server, READ))? {
        let gateway: &str = row.get(0);
        let span = [time("start_ms", row.get(1))?, time("end_ms", row.get(2))?];
        decode_records(
            span,
            row.get(3),
            Some(row.get(4)),
            row.get(5),
            &wanted,
            time,
            &mut records,
        )?;
        intervals.extend(records.drain(..).map(|r| (gateway.to_owned(), r)));
    }
    Ok(intervals)
}

/// The rows of a report's window: `$1` and `$2` bound its intervals' ends, `$3` is the
/// gateway (NULL: all).
const WINDOW: &str = "end_ms >= $1 AND end_ms <= $2 AND ($3::text IS NULL OR gateway = $3)";

struct Window<'a> {
    from_ms: i64,
    to_ms: i64,
    gateway: Option<&'a str>,
}

impl<'a> Window<'a> {
    fn new(from: SystemTime, to: SystemTime, gateway: Option<&'a str>) -> Self {
        Self {
            from_ms: to_millis("from", from).unwrap_or(0),
            to_ms: to_millis("to", to).unwrap_or(i64::MAX),
            gateway,
        }
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 3] {
        [&self.from_ms, &self.to_ms, &self.gateway]
    }
}

/// A chunk's key and its `keys` column, borrowed from the row read.
struct ChunkKeys<'row> {
    gateway: &'row str,
    start_ms: i64,
    chunk: i32,
    keys: &'row [u8],
}

/// Writes `intervals` of `gateway` as chunks within `tx`, replacing the chunks of the same
/// intervals: one binary COPY straight into the table.
async fn write_chunks(
    tx: &tokio_postgres::Transaction<'_>,
    server: &str,
    gateway: &str,
    intervals: &[HostInterval],
) -> Result<(), PostgresError> {
    let millis = |at: SystemTime| to_millis("time", at).unwrap_or(0);
    let mut sorted: Vec<(i64, i64, &HostInterval)> = intervals
        .iter()
        .map(|interval| (millis(interval.start), millis(interval.end), interval))
        .collect();
    sorted.sort_unstable_by_key(|(start, end, interval)| (*start, *end, interval.host));
    let mut starts: Vec<i64> = sorted.iter().map(|(start, ..)| *start).collect();
    starts.dedup();
    tx.execute(
        "DELETE FROM host_chunks WHERE gateway = $1 AND start_ms = ANY($2)",
        &[&gateway, &starts],
    )
    .await
    .map_err(refusal(
        server,
        "the replacement of an interval (does the role have DELETE?)",
    ))?;
    let sink = tx
        .copy_in(&format!(
            "COPY host_chunks ({CHUNK_COLUMNS}) FROM STDIN BINARY"
        ))
        .await
        .map_err(refusal(server, "COPY (does the role have INSERT?)"))?;
    let mut writer = pin!(BinaryCopyInWriter::new(sink, &CHUNK_TYPES));
    let (mut key_column, mut records, mut sets, mut limited) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for interval in sorted.chunk_by(|a, b| a.0 == b.0) {
        let (start_ms, end_ms) = (interval[0].0, interval[0].1);
        for (number, chunk) in interval.chunks(CHUNK_HOSTS).enumerate() {
            key_column.clear();
            records.clear();
            sets.clear();
            limited.clear();
            keys::encode(
                chunk
                    .iter()
                    .map(|(_, _, record)| (record.host, record.attempts)),
                &mut key_column,
            );
            for (_, _, record) in chunk {
                put_record(
                    &mut records,
                    &mut sets,
                    record,
                    millis(record.first_seen),
                    millis(record.last_seen),
                );
                put_limited(&mut limited, record);
            }
            writer
                .as_mut()
                .write(&[
                    &gateway,
                    &start_ms,
                    &end_ms,
                    &(number as i32),
                    &(chunk.len() as i32),
                    &key_column,
                    &records,
                    &sets,
                    &limited,
                ])
                .await
                .map_err(refusal(server, "COPY"))?;
        }
    }
    writer
        .as_mut()
        .finish()
        .await
        .map_err(refusal(server, "COPY"))?;
    Ok(())
}

/// The migration to schema version [`CHUNKED`]: version 2's rows, one gateway at a time, into
/// chunks; then their table goes.
async fn rows_into_chunks(
    tx: &tokio_postgres::Transaction<'_>,
    server: &str,
) -> Result<(), PostgresError> {
    let refused = |what: &'static str| refusal(server, what);
    let gateways: Vec<String> = tx
        .query("SELECT DISTINCT gateway FROM host_intervals", &[])
        .await
        .map_err(refused("reading version 2's gateways"))?
        .iter()
        .map(|row| row.get(0))
        .collect();
    for gateway in gateways {
        let stream = tx
            .copy_out(&format!(
                "COPY (SELECT {LEGACY_COLUMNS} FROM host_intervals WHERE gateway = '{}') \
                 TO STDOUT BINARY",
                gateway.replace('\'', "''")
            ))
            .await
            .map_err(refused("reading version 2's rows"))?;
        let mut rows = pin!(BinaryCopyOutStream::new(stream, &LEGACY_TYPES));
        let mut intervals = Vec::new();
        while let Some(row) = rows
            .try_next()
            .await
            .map_err(refused("reading version 2's rows"))?
        {
            intervals.push(legacy_interval(&row, server)?);
        }
        write_chunks(tx, server, &gateway, &intervals).await?;
    }
    tx.batch_execute("DROP TABLE host_intervals")
        .await
        .map_err(refused("dropping version 2's table"))
}

/// A record of version 2's `host_intervals`.
fn legacy_interval(
    row: &tokio_postgres::binary_copy::BinaryCopyOutRow,
    server: &str,
) -> Result<HostInterval, PostgresError> {
    let time = |ms: i64| {
        from_millis(ms).ok_or(PostgresError::BadTime {
            server: server.to_owned(),
            ms,
        })
    };
    let bytes = |value: &[u8]| {
        let mut out = [0u8; 16];
        let n = value.len().min(16);
        out[..n].copy_from_slice(&value[..n]);
        out
    };
    let sketch: &[u8] = row.get(9);
    let mut registers = [0u8; smtpguard_common::sketch::SKETCH_REGISTERS];
    let n = sketch.len().min(registers.len());
    registers[..n].copy_from_slice(&sketch[..n]);
    Ok(HostInterval {
        start: time(row.get(1))?,
        end: time(row.get(2))?,
        host: bytes(row.get(3)),
        first_seen: time(row.get(4))?,
        last_seen: time(row.get(5))?,
        attempts: row.get::<i64>(6) as u64,
        segments: row.get::<i64>(7) as u64,
        dropped: row.get::<i64>(8) as u64,
        limited: 0,
        sketch: registers,
        last_dst: bytes(row.get(10)),
        last_port: row.get::<i32>(11) as u16,
        last_reason: row.get::<i32>(12) as u16,
        exact_destinations: row.get::<Option<&[u8]>>(13).map(exact_keys),
    })
}

/// The keys of an exact destination set as version 2 kept them: little-endian words, 0 for
/// an empty slot.
fn exact_keys(bytes: &[u8]) -> [u32; EXACT_DESTINATIONS] {
    let mut keys = [0u32; EXACT_DESTINATIONS];
    for (key, word) in keys.iter_mut().zip(bytes.chunks_exact(4)) {
        *key = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
    }
    keys
}
