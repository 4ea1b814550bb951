//! Real fleet engines from Debian's packages, each started in a temporary folder on loopback
//! ports of its own (engineers run tests side by side) and stopped on drop, also when a test
//! fails: etcd (plain, or with TLS client certificates the test makes with openssl), and
//! PostgreSQL (initdb and pg_ctl as the `postgres` user: it refuses to run as root).

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};

/// How long an engine may take to answer after it was started.
const READY: Duration = Duration::from_secs(20);

/// Where Debian installs PostgreSQL 15's server programs.
pub const POSTGRES_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A loopback port nobody listens on now (picked by the kernel).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free loopback port")
}

/// A temporary folder for an engine's data, removed on drop.
fn scratch(name: &str) -> anyhow::Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(&format!("smtpguard-{name}-"))
        .tempdir()
        .context("creating a temporary folder")
}

fn run(command: &mut Command) -> anyhow::Result<String> {
    let output = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    ensure!(
        output.status.success(),
        "{command:?} failed with {}: {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Certificates made for one test: a CA, a server certificate for 127.0.0.1, a client
/// certificate, and a client certificate of another CA that the server must refuse.
pub struct Certificates {
    pub dir: tempfile::TempDir,
}

impl Certificates {
    pub fn make() -> anyhow::Result<Self> {
        let dir = scratch("certs")?;
        let at = |name: &str| dir.path().join(name);
        let openssl = |args: &[&str]| run(Command::new("openssl").args(args).current_dir(&dir));
        for ca in ["ca", "other-ca"] {
            openssl(&[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN=smtpguard test {ca}"),
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.pem"),
            ])?;
        }
        std::fs::write(at("server.ext"), "subjectAltName=IP:127.0.0.1\n")?;
        std::fs::write(at("client.ext"), "extendedKeyUsage=clientAuth\n")?;
        for (name, ca, ext) in [
            ("server", "ca", "server.ext"),
            ("client", "ca", "client.ext"),
            ("stranger", "other-ca", "client.ext"),
        ] {
            openssl(&[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ])?;
            openssl(&[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                &format!("{ca}.pem"),
                "-CAkey",
                &format!("{ca}.key"),
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                ext,
                "-out",
                &format!("{name}.pem"),
            ])?;
        }
        Ok(Self { dir })
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// One etcd member on loopback.
pub struct Etcd {
    child: Option<Child>,
    data: tempfile::TempDir,
    pub client_port: u16,
    peer_port: u16,
    tls: Option<PathBuf>,
}

impl Etcd {
    /// A plain (http://) member.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(None)
    }

    /// A member that serves TLS with `certificates`' server certificate and requires a
    /// client certificate of their CA.
    pub fn start_tls(certificates: &Certificates) -> anyhow::Result<Self> {
        Self::start_with(Some(certificates.dir.path().to_owned()))
    }

    fn start_with(tls: Option<PathBuf>) -> anyhow::Result<Self> {
        let mut etcd = Self {
            child: None,
            data: scratch("etcd")?,
            client_port: free_port(),
            peer_port: free_port(),
            tls,
        };
        etcd.resume()?;
        Ok(etcd)
    }

    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// Starts the member (again, on its data and ports) and waits until it serves.
    pub fn resume(&mut self) -> anyhow::Result<()> {
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.data.path().join("etcd.log"))?;
        let mut command = Command::new("etcd");
        command
            .arg("--name=test")
            .arg(format!(
                "--data-dir={}",
                self.data.path().join("data").display()
            ))
            .arg(format!("--listen-client-urls={}", self.endpoint()))
            .arg(format!("--advertise-client-urls={}", self.endpoint()))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=test={peer}"))
            .arg("--log-level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some(dir) = &self.tls {
            command
                .arg(format!("--cert-file={}", dir.join("server.pem").display()))
                .arg(format!("--key-file={}", dir.join("server.key").display()))
                .arg(format!(
                    "--trusted-ca-file={}",
                    dir.join("ca.pem").display()
                ))
                .arg("--client-cert-auth");
        }
        self.child = Some(
            command
                .spawn()
                .context("starting etcd (Debian's etcd-server)")?,
        );
        let deadline = Instant::now() + READY;
        while TcpStream::connect(("127.0.0.1", self.client_port)).is_err() {
            if Instant::now() > deadline {
                bail!("etcd did not listen within {READY:?}: {}", self.log());
            }
            thread::sleep(Duration::from_millis(50));
        }
        if self.tls.is_none() {
            // Listening is not serving yet: a range read answers once the member leads.
            while self.post("/v3/kv/range", r#"{"key":"AA=="}"#).is_err() {
                if Instant::now() > deadline {
                    bail!("etcd did not serve within {READY:?}: {}", self.log());
                }
                thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    /// Kills the member (its data stays for [`Self::resume`]).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data.path().join("etcd.log")).unwrap_or_default()
    }

    /// A request to etcd's JSON gateway (plain members only): what a tool other than
    /// smtpguard writes, compaction, reads.
    pub fn post(&self, path: &str, body: &str) -> anyhow::Result<serde_json::Value> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.client_port))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            stream,
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        let (head, body) = answer
            .split_once("\r\n\r\n")
            .context("an HTTP answer from etcd")?;
        ensure!(head.starts_with("HTTP/1.1 200"), "etcd {path}: {answer}");
        // The gateway answers with chunked encoding or not; the JSON is the one object.
        let start = body.find('{').context("a JSON body")?;
        let end = body.rfind('}').context("a JSON body")?;
        Ok(serde_json::from_str(&body[start..=end])?)
    }

    /// Writes `value` at `key` as any etcd client could.
    pub fn put(&self, key: &str, value: &[u8]) -> anyhow::Result<()> {
        self.post(
            "/v3/kv/put",
            &format!(
                r#"{{"key":"{}","value":"{}"}}"#,
                base64(key.as_bytes()),
                base64(value)
            ),
        )?;
        Ok(())
    }

    /// The store's current revision.
    pub fn revision(&self) -> anyhow::Result<i64> {
        let answer = self.post("/v3/kv/range", r#"{"key":"AA=="}"#)?;
        answer["header"]["revision"]
            .as_str()
            .and_then(|text| text.parse().ok())
            .context("a revision in the header")
    }

    /// Compacts the history up to the current revision: older revisions can no longer be
    /// watched from.
    pub fn compact(&self) -> anyhow::Result<i64> {
        let revision = self.revision()?;
        self.post(
            "/v3/kv/compaction",
            &format!(r#"{{"revision":"{revision}","physical":true}}"#),
        )?;
        Ok(revision)
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Standard base64 with padding, for etcd's JSON gateway.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut text = String::new();
    for chunk in bytes.chunks(3) {
        let word = chunk.iter().enumerate().fold(0u32, |word, (i, byte)| {
            word | u32::from(*byte) << (16 - 8 * i)
        });
        for i in 0..4 {
            if i <= chunk.len() {
                text.push(ALPHABET[(word >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                text.push('=');
            }
        }
    }
    text
}

/// One PostgreSQL 15 cluster on a loopback port, run by the `postgres` user in a temporary
/// folder it owns; the agents' role `smtpguard` owns the database `smtpguard`.
pub struct Postgres {
    dir: PathBuf,
    pub port: u16,
    running: bool,
}

impl Postgres {
    /// A server that also takes plain connections.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(None)
    }

    /// A server on TLS only, with `certificates`' server certificate (for 127.0.0.1): the
    /// superuser connects without a client certificate, every other role with one of their CA.
    pub fn start_tls(certificates: &Certificates) -> anyhow::Result<Self> {
        Self::start_with(Some(certificates))
    }

    fn start_with(tls: Option<&Certificates>) -> anyhow::Result<Self> {
        // Not a TempDir: the folder belongs to `postgres`, and is removed on drop as root.
        let dir = std::env::temp_dir().join(format!(
            "smtpguard-postgres-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir)?;
        run(Command::new("chown").arg("postgres:postgres").arg(&dir))?;
        let mut postgres = Self {
            dir,
            port: free_port(),
            running: false,
        };
        postgres.as_postgres(
            "initdb",
            &[
                "-D",
                &postgres.data(),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
            ],
        )?;
        if let Some(certificates) = tls {
            postgres.serve_tls_only(certificates)?;
        }
        postgres.resume()?;
        postgres.psql("postgres", "CREATE ROLE smtpguard LOGIN")?;
        postgres.psql("postgres", "CREATE DATABASE smtpguard OWNER smtpguard")?;
        Ok(postgres)
    }

    fn serve_tls_only(&self, certificates: &Certificates) -> anyhow::Result<()> {
        let data = Path::new(&self.data()).to_owned();
        for name in ["server.pem", "server.key", "ca.pem"] {
            let copy = data.join(name);
            std::fs::copy(certificates.file(name), &copy)?;
            run(Command::new("chown").arg("postgres:postgres").arg(&copy))?;
            run(Command::new("chmod").arg("600").arg(&copy))?;
        }
        let mut conf = std::fs::File::options()
            .append(true)
            .open(data.join("postgresql.conf"))?;
        writeln!(
            conf,
            "ssl = on\nssl_cert_file = 'server.pem'\nssl_key_file = 'server.key'\n\
             ssl_ca_file = 'ca.pem'"
        )?;
        // No `host` line: a plain TCP connection finds no entry and is refused.
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\n\
             hostssl all postgres 127.0.0.1/32 trust\n\
             hostssl all all 127.0.0.1/32 trust clientcert=verify-ca\n",
        )?;
        Ok(())
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    fn as_postgres(&self, program: &str, args: &[&str]) -> anyhow::Result<String> {
        run(Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(Path::new(POSTGRES_BIN).join(program))
            .args(args)
            .current_dir(&self.dir))
    }

    /// Starts the server (again) and waits until it accepts connections.
    pub fn resume(&mut self) -> anyhow::Result<()> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.display()
        );
        self.as_postgres(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-l",
                &self.dir.join("postgres.log").display().to_string(),
                "-o",
                &options,
                "-w",
                "start",
            ],
        )?;
        self.running = true;
        Ok(())
    }

    /// Stops the server at once (its data stays for [`Self::resume`]).
    pub fn stop(&mut self) -> anyhow::Result<()> {
        self.as_postgres(
            "pg_ctl",
            &["-D", &self.data(), "-m", "immediate", "-w", "stop"],
        )?;
        self.running = false;
        Ok(())
    }

    /// The connection string the agents use.
    pub fn url(&self) -> String {
        format!("postgres://smtpguard@127.0.0.1:{}/smtpguard", self.port)
    }

    /// Runs `sql` as the superuser in `database`; returns psql's unaligned output.
    pub fn psql(&self, database: &str, sql: &str) -> anyhow::Result<String> {
        run(Command::new("runuser")
            .args(["-u", "postgres", "--", "psql", "-X", "-q", "-A", "-t"])
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-d",
                database,
            ])
            .args(["-v", "ON_ERROR_STOP=1", "-c", sql])
            .current_dir(&self.dir))
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.running {
            let _ = self.stop();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_the_standard() {
        for (plain, coded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(super::base64(plain.as_bytes()), coded);
        }
    }
}
