//! The fleet's reports in PostgreSQL: the connection, the schema (created and migrated by the
//! agents, versioned), the idempotent upsert of a snapshot's per-host interval records keyed
//! on (gateway, interval start, host), and the read of a report's window.
//!
//! Both directions use binary COPY: a million-host snapshot is one COPY into a temporary
//! table and one `INSERT ... ON CONFLICT DO UPDATE`, so sending it again (after a lost
//! answer) rewrites the same rows instead of counting them twice.

use std::{
    pin::pin,
    time::{Duration, SystemTime},
};

use futures_util::TryStreamExt as _;
use smtpguard_common::sketch::EXACT_DESTINATIONS;
use tokio_postgres::{
    NoTls,
    binary_copy::{BinaryCopyInWriter, BinaryCopyOutStream},
    types::Type,
};

use crate::{
    config::PostgresConfig,
    store::{HostInterval, from_millis, to_millis},
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
];

/// The columns in COPY order, with their types.
const COLUMNS: &str = "gateway, start_ms, end_ms, host, first_seen_ms, last_seen_ms, attempts, \
                       segments, dropped, sketch, last_dst, last_port, last_reason, \
                       exact_destinations";
const TYPES: [Type; 14] = [
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
    let (client, connection) =
        parsed
            .connect(NoTls)
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

    fn refused(&self, what: &str) -> impl FnOnce(tokio_postgres::Error) -> PostgresError {
        refusal(&self.server, what)
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
        for migration in &MIGRATIONS[found as usize..] {
            tx.batch_execute(migration).await.map_err(refused(
                "a schema migration (does the role own the database?)",
            ))?;
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

    /// Writes one snapshot interval's records of `gateway`; a second call with the same
    /// records changes nothing. Returns the rows written.
    pub async fn ship(
        &mut self,
        gateway: &str,
        intervals: &[HostInterval],
    ) -> Result<u64, PostgresError> {
        let server = self.server.clone();
        let refused = |what: &'static str| refusal(&server, what);
        let tx = self
            .client
            .transaction()
            .await
            .map_err(refused("a transaction"))?;
        tx.batch_execute("CREATE TEMPORARY TABLE incoming (LIKE host_intervals) ON COMMIT DROP")
            .await
            .map_err(refused("a temporary table"))?;
        let sink = tx
            .copy_in(&format!("COPY incoming ({COLUMNS}) FROM STDIN BINARY"))
            .await
            .map_err(refused("COPY"))?;
        let mut writer = pin!(BinaryCopyInWriter::new(sink, &TYPES));
        let millis = |at: SystemTime| to_millis("time", at).unwrap_or(0);
        for interval in intervals {
            let exact = interval.exact_destinations.map(|keys| {
                keys.iter()
                    .flat_map(|key| key.to_le_bytes())
                    .collect::<Vec<u8>>()
            });
            writer
                .as_mut()
                .write(&[
                    &gateway,
                    &millis(interval.start),
                    &millis(interval.end),
                    &&interval.host[..],
                    &millis(interval.first_seen),
                    &millis(interval.last_seen),
                    &(interval.attempts as i64),
                    &(interval.segments as i64),
                    &(interval.dropped as i64),
                    &&interval.sketch[..],
                    &&interval.last_dst[..],
                    &i32::from(interval.last_port),
                    &i32::from(interval.last_reason),
                    &exact,
                ])
                .await
                .map_err(refused("COPY"))?;
        }
        writer.as_mut().finish().await.map_err(refused("COPY"))?;
        let written = tx
            .execute(
                &format!(
                    "INSERT INTO host_intervals ({COLUMNS}) SELECT {COLUMNS} FROM incoming
                     ON CONFLICT (gateway, start_ms, host) DO UPDATE SET
                         end_ms = EXCLUDED.end_ms, first_seen_ms = EXCLUDED.first_seen_ms,
                         last_seen_ms = EXCLUDED.last_seen_ms, attempts = EXCLUDED.attempts,
                         segments = EXCLUDED.segments, dropped = EXCLUDED.dropped,
                         sketch = EXCLUDED.sketch, last_dst = EXCLUDED.last_dst,
                         last_port = EXCLUDED.last_port, last_reason = EXCLUDED.last_reason,
                         exact_destinations = EXCLUDED.exact_destinations"
                ),
                &[],
            )
            .await
            .map_err(refused(
                "the upsert (does the role have INSERT and UPDATE?)",
            ))?;
        tx.commit().await.map_err(refused("the commit"))?;
        Ok(written)
    }

    /// The records of every gateway (or of `gateway`) whose interval ended within
    /// `[from, to]`, oldest first, each with its gateway.
    pub async fn intervals(
        &self,
        from: SystemTime,
        to: SystemTime,
        gateway: Option<&str>,
    ) -> Result<Vec<(String, HostInterval)>, PostgresError> {
        let (from_ms, to_ms) = (
            to_millis("from", from).unwrap_or(0),
            to_millis("to", to).unwrap_or(i64::MAX),
        );
        // COPY takes no parameters: the values are numbers and a checked gateway id.
        let only = match gateway {
            Some(id)
                if id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) =>
            {
                format!("AND gateway = '{id}'")
            }
            Some(_) => "AND false".to_owned(),
            None => String::new(),
        };
        let stream = self
            .client
            .copy_out(&format!(
                "COPY (SELECT {COLUMNS} FROM host_intervals WHERE end_ms >= {from_ms} AND \
                 end_ms <= {to_ms} {only} ORDER BY end_ms, gateway, host) TO STDOUT BINARY"
            ))
            .await
            .map_err(self.refused("the report's read (does the role have SELECT?)"))?;
        let mut rows = pin!(BinaryCopyOutStream::new(stream, &TYPES));
        let mut intervals = Vec::new();
        let time = |ms: i64| {
            from_millis(ms).ok_or(PostgresError::BadTime {
                server: self.server.clone(),
                ms,
            })
        };
        let bytes = |value: &[u8]| {
            let mut out = [0u8; 16];
            let n = value.len().min(16);
            out[..n].copy_from_slice(&value[..n]);
            out
        };
        while let Some(row) = rows
            .try_next()
            .await
            .map_err(self.refused("the report's read"))?
        {
            let sketch: &[u8] = row.get(9);
            let mut registers = [0u8; smtpguard_common::sketch::SKETCH_REGISTERS];
            let n = sketch.len().min(registers.len());
            registers[..n].copy_from_slice(&sketch[..n]);
            intervals.push((
                row.get::<&str>(0).to_owned(),
                HostInterval {
                    start: time(row.get(1))?,
                    end: time(row.get(2))?,
                    host: bytes(row.get(3)),
                    first_seen: time(row.get(4))?,
                    last_seen: time(row.get(5))?,
                    attempts: row.get::<i64>(6) as u64,
                    segments: row.get::<i64>(7) as u64,
                    dropped: row.get::<i64>(8) as u64,
                    sketch: registers,
                    last_dst: bytes(row.get(10)),
                    last_port: row.get::<i32>(11) as u16,
                    last_reason: row.get::<i32>(12) as u16,
                    exact_destinations: row.get::<Option<&[u8]>>(13).map(exact_keys),
                },
            ));
        }
        Ok(intervals)
    }
}

/// The keys of an exact destination set as shipped: little-endian words, 0 for an empty slot.
fn exact_keys(bytes: &[u8]) -> [u32; EXACT_DESTINATIONS] {
    let mut keys = [0u32; EXACT_DESTINATIONS];
    for (key, word) in keys.iter_mut().zip(bytes.chunks_exact(4)) {
        *key = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
    }
    keys
}
