//! The fleet's reports in PostgreSQL: the connection, as every gateway and the CLI make it.

use std::time::Duration;

use tokio_postgres::NoTls;

use crate::config::PostgresConfig;

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
