//! The process under test: a mube-apiserver (release build) started on a
//! free loopback port with a temporary data directory and N registered nodes,
//! observed through /proc.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

pub fn node_name(i: usize) -> String {
    format!("node-{i:06}")
}

/// CPU time and memory of a process, from /proc (Linux).
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcStats {
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
    pub peak_rss_bytes: u64,
}

pub fn proc_stats(pid: u32) -> ProcStats {
    let mut out = ProcStats::default();
    if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Fields after the command name (which may contain spaces) start after ')'.
        if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let ticks = 100.0; // USER_HZ on Linux
            let utime: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
            let stime: f64 = fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
            out.cpu_seconds = (utime + stime) / ticks;
        }
    }
    if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
        for line in status.lines() {
            let kb = |l: &str| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
                    * 1024
            };
            if line.starts_with("VmRSS:") {
                out.rss_bytes = kb(line);
            } else if line.starts_with("VmHWM:") {
                out.peak_rss_bytes = kb(line);
            }
        }
    }
    out
}

/// Total size of the files under `dir`.
/// Reads a watch response, handing each decoded event to `on_event` until
/// the stream ends or `on_event` says to stop (returns false).
pub async fn each_event(
    response: reqwest::Response,
    mut on_event: impl FnMut(serde_json::Value) -> bool,
) {
    use futures::StreamExt;
    let mut body = response.bytes_stream();
    let mut buf = Vec::new();
    while let Some(Ok(chunk)) = body.next().await {
        buf.extend_from_slice(&chunk);
        while let Some(end) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=end).collect();
            if let Ok(event) = serde_json::from_slice(&line) {
                if !on_event(event) {
                    return;
                }
            }
        }
    }
}

pub fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

pub struct Server {
    binary: PathBuf,
    pub dir: tempfile::TempDir,
    pub url: String,
    child: Option<Child>,
    pub security: Security,
}

/// How the measured server is set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Security {
    /// Plain HTTP, anonymous access, `AlwaysAllow`: the API alone, as
    /// measured before security existed.
    Plain,
    /// The server's defaults (HTTPS with the generated CA, `Node,RBAC`),
    /// each node beating with its own credential (a bearer token for
    /// `system:node:<name>` from a token file; TLS connections kept alive).
    Secure,
}

/// `GET url` (with `token`, if any) decoded as JSON; errors as text.
pub async fn get_json(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
) -> Result<serde_json::Value, String> {
    let mut request = client.get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.map_err(|e| e.to_string())?;
    response.json().await.map_err(|e| e.to_string())
}

/// Node `i`'s bearer token on a secure server.
pub fn node_token(i: usize) -> String {
    format!("bench-node-token-{i:08}")
}

/// The bench's admin token on a secure server (`system:masters`).
pub const ADMIN_TOKEN: &str = "bench-admin-token";

/// Where and how the load reaches a server.
#[derive(Clone)]
pub struct Endpoint {
    pub url: String,
    /// The CA to trust, with TLS.
    pub ca_pem: Option<Vec<u8>>,
    /// Whether each heartbeat carries its node's token.
    pub node_tokens: bool,
}

impl Endpoint {
    /// A client for this endpoint: one kept-alive connection.
    pub fn connection(&self) -> reqwest::Client {
        let mut builder = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(30));
        if let Some(ca) = self
            .ca_pem
            .as_ref()
            .and_then(|p| reqwest::Certificate::from_pem(p).ok())
        {
            builder = builder
                .tls_built_in_root_certs(false)
                .add_root_certificate(ca);
        }
        builder.build().expect("HTTP client")
    }
}

impl Server {
    /// Writes a config with `nodes` registered nodes and starts the server;
    /// returns once /readyz answers.
    pub async fn start(binary: &Path, nodes: usize, extra_yaml: &str) -> Result<Server, String> {
        Server::start_with(binary, nodes, extra_yaml, Security::Plain).await
    }

    /// `start`, set up as `security` says.
    pub async fn start_with(
        binary: &Path,
        nodes: usize,
        extra_yaml: &str,
        security: Security,
    ) -> Result<Server, String> {
        if !binary.exists() {
            return Err(format!(
                "{} is missing: build it first with `cargo build --release -p mube-apiserver`",
                binary.display()
            ));
        }
        let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
        let port = free_port()?;
        let security_yaml = match security {
            Security::Plain => "tls: {enabled: false}\nauthentication: {anonymous: true}\nauthorization: {mode: AlwaysAllow}\n".to_string(),
            Security::Secure => {
                let tokens = dir.path().join("tokens.csv");
                let mut csv = format!(
                    "{ADMIN_TOKEN},bench-admin,0,system:masters\nbench-reader-token,user-500,1,\n"
                );
                for i in 0..nodes {
                    csv.push_str(&format!(
                        "{},system:node:{},{i},system:nodes\n",
                        node_token(i),
                        node_name(i)
                    ));
                }
                std::fs::write(&tokens, csv).map_err(|e| format!("token file: {e}"))?;
                format!("authentication: {{tokenFile: {}}}\n", tokens.display())
            }
        };
        let mut yaml = format!(
            "listenAddress: \"127.0.0.1:{port}\"\ndataDir: {}\n{security_yaml}{extra_yaml}\nnodes:\n",
            dir.path().join("data").display()
        );
        for i in 0..nodes {
            yaml.push_str(&format!(
                "  - {{name: {}, ip: 127.0.0.1, port: 10250}}\n",
                node_name(i)
            ));
        }
        std::fs::write(dir.path().join("apiserver.yaml"), yaml)
            .map_err(|e| format!("config: {e}"))?;
        let mut server = Server {
            binary: binary.to_path_buf(),
            dir,
            url: match security {
                Security::Plain => format!("http://127.0.0.1:{port}"),
                Security::Secure => format!("https://127.0.0.1:{port}"),
            },
            child: None,
            security,
        };
        server.spawn()?;
        server.wait_ready(Duration::from_secs(600)).await?;
        Ok(server)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// How the load reaches this server.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint {
            url: self.url.clone(),
            ca_pem: (self.security == Security::Secure)
                .then(|| std::fs::read(self.data_dir().join("pki/ca.crt")).ok())
                .flatten(),
            node_tokens: self.security == Security::Secure,
        }
    }

    pub fn spawn(&mut self) -> Result<(), String> {
        let child = Command::new(&self.binary)
            .env(
                "MUBE_APISERVER_CONFIG",
                self.dir.path().join("apiserver.yaml"),
            )
            // Quiet by default; RUST_LOG=mube_apiserver::store=debug shows
            // snapshot pauses and segment rotations during a run.
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            // The server logs to stdout: shown only when asked for with RUST_LOG.
            .stdout(if std::env::var_os("RUST_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.binary.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Polls /readyz; returns how long it took.
    pub async fn wait_ready(&mut self, limit: Duration) -> Result<Duration, String> {
        let started = Instant::now();
        loop {
            // Made each time: with TLS, the CA exists once the server made it.
            let client = self.endpoint().connection();
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                return Err(format!("mube-apiserver exited during start-up: {status}"));
            }
            if let Ok(r) = client.get(format!("{}/readyz", self.url)).send().await {
                if r.status().is_success() {
                    return Ok(started.elapsed());
                }
            }
            if started.elapsed() > limit {
                return Err("mube-apiserver did not become ready".into());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A child process killed (and reaped) when dropped.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
