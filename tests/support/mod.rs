//! Helpers for end-to-end tests: start the real binaries on free ports with
//! temporary data directories, and talk to them over real sockets.
//!
//! The binaries are taken from the same target directory as the test
//! executable (`make test` builds them first); `MUBE_BIN_DIR` overrides that.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use mube_apis::watch::WatchEvent;
use serde_json::Value;

pub mod etcd;

/// Path of a workspace binary, built by `cargo build --workspace`.
pub fn bin(name: &str) -> PathBuf {
    let dir = match std::env::var_os("MUBE_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            let exe = std::env::current_exe().expect("test executable path");
            // target/{profile}/deps/<test> -> target/{profile}
            exe.parent()
                .and_then(Path::parent)
                .expect("target dir")
                .to_path_buf()
        }
    };
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (`make test` does: cargo build --workspace --bins)",
        path.display()
    );
    path
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A node line for the config.
pub struct NodeSpec {
    pub name: &'static str,
    pub ip: &'static str,
    pub port: u16,
}

pub fn node(name: &'static str) -> NodeSpec {
    NodeSpec {
        name,
        ip: "127.0.0.1",
        port: 10250,
    }
}

/// How to start an API server.
pub struct Options {
    pub nodes: Vec<NodeSpec>,
    pub notready_timeout: &'static str,
    /// Extra YAML lines appended to the config.
    pub extra_config: String,
    /// Where the data lives (default: `data` in the server's temp dir).
    pub data_dir: Option<PathBuf>,
    /// HTTPS with the generated CA (`tls: {enabled: true}`, unless
    /// `extra_config` has its own `tls:`).
    pub tls: bool,
    /// The CA clients trust (default: the one the server generates).
    pub ca_file: Option<PathBuf>,
    /// The server's own security defaults (HTTPS, no anonymous access,
    /// `Node,RBAC`); `Api` then acts as the admin of the written
    /// kubeconfig, and as each node with a certificate for it. Without it,
    /// the config says `authorization: {mode: AlwaysAllow}`, anonymous
    /// access and plain HTTP (unless `tls`), so that suites about API
    /// semantics need no credentials.
    pub secure: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            nodes: vec![node("node-a")],
            notready_timeout: "60s",
            extra_config: String::new(),
            data_dir: None,
            tls: false,
            ca_file: None,
            secure: false,
        }
    }
}

/// A running `mube-apiserver`, killed when dropped.
pub struct ApiServer {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    pub log: Arc<Mutex<Vec<String>>>,
    env: Vec<(String, String)>,
    data_dir: Option<PathBuf>,
    pub tls: bool,
    ca_file: Option<PathBuf>,
    pub secure: bool,
}

impl ApiServer {
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("apiserver.yaml")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| self.dir.path().join("data"))
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// A client for this server: with TLS, trusting the cluster CA the
    /// server generated (and nothing else); on a `secure` server, as its
    /// admin (the kubeconfig's client certificate).
    pub fn http_client(&self) -> reqwest::Client {
        let identity = self
            .secure
            .then(|| admin_identity(&self.data_dir().join("pki")));
        self.client_as(identity.as_deref(), None)
    }

    /// A client trusting the cluster CA (with TLS) that presents the
    /// client certificate and key `identity_pem` and/or bearer `token`.
    pub fn client_as(&self, identity_pem: Option<&[u8]>, token: Option<&str>) -> reqwest::Client {
        client_for(self.ca(), identity_pem, token)
    }

    /// The CA file clients trust, with TLS.
    fn ca(&self) -> Option<PathBuf> {
        self.tls.then(|| {
            self.ca_file
                .clone()
                .unwrap_or_else(|| self.data_dir().join("pki/ca.crt"))
        })
    }

    /// A certificate and key (PEM, one after the other) signed by the
    /// cluster CA for `user` in `groups`, as `kubectl`'s users get them.
    pub fn client_certificate(&self, user: &str, groups: &[&str]) -> Vec<u8> {
        signed_identity(&self.data_dir(), user, groups)
    }

    /// A client acting as node `name` (`system:node:<name>`).
    pub fn node_client(&self, name: &str) -> reqwest::Client {
        let pem = self.client_certificate(&format!("system:node:{name}"), &["system:nodes"]);
        self.client_as(Some(&pem), None)
    }

    /// Writes a config, starts the server and waits for /readyz.
    pub async fn start(options: Options) -> ApiServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let mut server = ApiServer {
            port,
            dir,
            child: None,
            log: Arc::new(Mutex::new(Vec::new())),
            env: vec![
                (
                    "MUBE_NODE_NOTREADY_TIMEOUT".into(),
                    options.notready_timeout.into(),
                ),
                ("MUBE_APISERVER_SHUTDOWN_TIMEOUT".into(), "3s".into()),
            ],
            data_dir: options.data_dir,
            tls: options.tls || options.secure,
            ca_file: options.ca_file.clone(),
            secure: options.secure,
        };
        let extra = options.extra_config.clone();
        server.write_config(&options.nodes, &extra);
        server.spawn();
        server.wait_ready().await;
        server
    }

    pub fn write_config(&self, nodes: &[NodeSpec], extra: &str) {
        let mut yaml = format!(
            "listenAddress: \"127.0.0.1:{}\"\ndataDir: {}\n",
            self.port,
            self.data_dir().display()
        );
        if nodes.is_empty() {
            yaml.push_str("nodes: []\n");
        } else {
            yaml.push_str("nodes:\n");
            for n in nodes {
                yaml.push_str(&format!(
                    "  - name: {}\n    ip: {}\n    port: {}\n",
                    n.name, n.ip, n.port
                ));
            }
        }
        yaml.push_str(extra);
        // `MUBE_E2E_ETCD=http://127.0.0.1:2379`: every server stores in that
        // etcd (under a prefix of its own, since tests run at once), so
        // that a suite runs against the etcd backend (CI does this with
        // the kubectl and kube-rs suites).
        if let Ok(endpoint) = std::env::var("MUBE_E2E_ETCD") {
            if !extra.contains("storage:") {
                yaml.push_str(&format!(
                    "storage:\n  backend: etcd\n  etcd:\n    endpoints: [\"{endpoint}\"]\n    prefix: /mube-e2e/{}-{}\n",
                    std::process::id(),
                    self.port
                ));
            }
        }
        if !self.secure {
            let tls = if self.tls { "true" } else { "false" };
            for (key, line) in [
                ("tls:", format!("tls: {{enabled: {tls}}}\n")),
                (
                    "authentication:",
                    "authentication: {anonymous: true}\n".into(),
                ),
                (
                    "authorization:",
                    "authorization: {mode: AlwaysAllow}\n".into(),
                ),
            ] {
                if !extra.contains(key) {
                    yaml.push_str(&line);
                }
            }
        }
        std::fs::write(self.config_path(), yaml).expect("write config");
    }

    pub fn command(&self) -> Command {
        let mut cmd = Command::new(bin("mube-apiserver"));
        cmd.env("MUBE_APISERVER_CONFIG", self.config_path())
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    fn spawn(&mut self) {
        let mut child = self.command().spawn().expect("start mube-apiserver");
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let log = self.log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    log.lock().unwrap().push(line);
                }
            });
        }
        self.child = Some(child);
    }

    pub async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "mube-apiserver exited with {status} during start-up:\n{}",
                        self.logs()
                    );
                }
            }
            // Built each time: with TLS, the CA exists once the server made it.
            let client = self.http_client();
            if let Ok(r) = client.get(format!("{}/readyz", self.url())).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "mube-apiserver not ready in 20s:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn logs(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Sends `signal` (`STOP`, `CONT`, ...) to the running server.
    pub fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("server running");
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal}");
    }

    /// `kill -9`: no chance to flush anything.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The server process's PID.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server running").id()
    }

    /// SIGTERM, and the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("server running");
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "mube-apiserver did not stop within 10s of SIGTERM:\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts again on the same port and data directory.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the server first");
        self.spawn();
        self.wait_ready().await;
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A client trusting `ca` (when given), presenting `identity_pem` (a
/// certificate and key) and/or a bearer `token`.
pub fn client_for(
    ca: Option<PathBuf>,
    identity_pem: Option<&[u8]>,
    token: Option<&str>,
) -> reqwest::Client {
    let mut builder = reqwest::Client::builder();
    if let Some(ca) = ca {
        let pem = std::fs::read(ca).unwrap_or_default();
        if let Ok(ca) = reqwest::Certificate::from_pem(&pem) {
            builder = builder
                .tls_built_in_root_certs(false)
                .add_root_certificate(ca);
        }
    }
    if let Some(identity) = identity_pem.and_then(|p| reqwest::Identity::from_pem(p).ok()) {
        builder = builder.identity(identity);
    }
    if let Some(token) = token {
        let mut headers = reqwest::header::HeaderMap::new();
        let value = format!("Bearer {token}").parse().expect("token header");
        headers.insert(reqwest::header::AUTHORIZATION, value);
        builder = builder.default_headers(headers);
    }
    builder.build().expect("HTTP client")
}

/// The admin's certificate and key under a server's `pki` directory (what
/// its kubeconfig holds), PEM, one after the other; empty if not there yet.
pub fn admin_identity(pki: &Path) -> Vec<u8> {
    let mut pem = std::fs::read(pki.join("admin.crt")).unwrap_or_default();
    pem.push(b'\n');
    pem.extend(std::fs::read(pki.join("admin.key")).unwrap_or_default());
    pem
}

/// A client certificate and key for `user` in `groups`, signed by the CA
/// under `data_dir/pki`.
fn signed_identity(data_dir: &Path, user: &str, groups: &[&str]) -> Vec<u8> {
    let pki = data_dir.join("pki");
    let ca_pem = std::fs::read_to_string(pki.join("ca.crt")).expect("the cluster CA");
    let ca_key = std::fs::read_to_string(pki.join("ca.key")).expect("the cluster CA key");
    let issuer = rcgen::Issuer::from_ca_cert_pem(
        &ca_pem,
        rcgen::KeyPair::from_pem(&ca_key).expect("CA key"),
    )
    .expect("CA");
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, user);
    for g in groups {
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, *g);
    }
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, &issuer).expect("sign");
    format!("{}\n{}", cert.pem(), key.serialize_pem()).into_bytes()
}

/// Makes the client a node's heartbeat is sent with.
type NodeClients = Arc<dyn Fn(&str) -> reqwest::Client + Send + Sync>;

/// A thin client for the tests.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
    /// On a secure server: makes the client each node's heartbeat needs.
    nodes: Option<NodeClients>,
}

/// Status code and JSON body.
pub struct Reply {
    pub code: u16,
    pub body: Value,
}

impl Api {
    pub fn new(server: &ApiServer) -> Api {
        let nodes: Option<NodeClients> = server.secure.then(|| {
            let (data_dir, ca) = (server.data_dir(), server.ca());
            Arc::new(move |name: &str| {
                let pem =
                    signed_identity(&data_dir, &format!("system:node:{name}"), &["system:nodes"]);
                client_for(ca.clone(), Some(&pem), None)
            }) as Arc<_>
        });
        Api {
            base: server.url(),
            http: server.http_client(),
            nodes,
        }
    }

    /// This client with another HTTP client (another identity).
    pub fn with(&self, http: reqwest::Client) -> Api {
        Api {
            http,
            ..self.clone()
        }
    }

    async fn reply(r: reqwest::RequestBuilder) -> Reply {
        let resp = r.send().await.expect("request");
        let code = resp.status().as_u16();
        let bytes = resp.bytes().await.expect("body");
        let body = serde_json::from_slice(&bytes)
            .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()));
        Reply { code, body }
    }

    pub async fn get(&self, path: &str) -> Reply {
        Self::reply(self.http.get(format!("{}{path}", self.base))).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        Self::reply(self.http.post(format!("{}{path}", self.base)).json(body)).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Reply {
        Self::reply(self.http.put(format!("{}{path}", self.base)).json(body)).await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        Self::reply(self.http.delete(format!("{}{path}", self.base))).await
    }

    pub async fn raw(
        &self,
        method: reqwest::Method,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Reply {
        Self::reply(
            self.http
                .request(method, format!("{}{path}", self.base))
                .header("content-type", content_type)
                .body(body),
        )
        .await
    }

    /// A heartbeat for `name`, sent as that node on a secure server.
    pub async fn heartbeat(&self, name: &str) -> Reply {
        let api = match &self.nodes {
            Some(client_for) => self.with(client_for(name)),
            None => self.clone(),
        };
        api.post(
            "/api/v1/nodes/heartbeat",
            &serde_json::json!({"name": name, "runtime": "containerd", "version": "0.1.0", "capacity": 10}),
        )
        .await
    }

    /// How many stored objects, of every kind mube serves, were last written
    /// after revision `after` and before `before`. Revisions between two
    /// writes of a test are used by the server's own writes (the node
    /// lifecycle controller records Events on its own schedule); a test that
    /// proves it used no revision compares with this count.
    pub async fn objects_written_between(&self, after: u64, before: u64) -> usize {
        let mut count = 0;
        for path in [
            "/api/v1/nodes",
            "/apis/coordination.k8s.io/v1/leases",
            "/api/v1/events",
            "/api/v1/pods",
        ] {
            let list = self.get(path).await;
            assert_eq!(list.code, 200, "{path}: {}", list.body);
            count += list.body["items"]
                .as_array()
                .map(|items| {
                    items
                        .iter()
                        .filter(|o| (after + 1..before).contains(&rv(o)))
                        .count()
                })
                .unwrap_or(0);
        }
        count
    }

    /// Opens a watch; `query` is everything after `?watch=true&`.
    pub async fn watch(&self, path: &str, query: &str) -> Watch {
        let resp = self
            .http
            .get(format!("{}{path}?watch=true&{query}", self.base))
            .send()
            .await
            .expect("watch request");
        assert_eq!(resp.status().as_u16(), 200, "watch {path}?{query}");
        Watch {
            stream: Box::pin(resp.bytes_stream()),
            buffer: Vec::new(),
            ended: false,
        }
    }
}

/// The fields a 422's `details.causes` name, in order.
pub fn cause_fields(status: &Value) -> Vec<&str> {
    status["details"]["causes"]
        .as_array()
        .map(|c| c.iter().filter_map(|c| c["field"].as_str()).collect())
        .unwrap_or_default()
}

pub fn state(node: &Value) -> &str {
    node.pointer("/status/state")
        .and_then(Value::as_str)
        .unwrap_or("")
}

pub fn rv(object: &Value) -> u64 {
    object
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .expect("resourceVersion")
}

type ByteStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>;

/// A watch response read line by line.
pub struct Watch {
    stream: ByteStream,
    buffer: Vec<u8>,
    pub ended: bool,
}

impl Watch {
    /// The next event, or `None` if none came within `wait` or the stream ended.
    pub async fn next(&mut self, wait: Duration) -> Option<WatchEvent> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(pos) = self.buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=pos).collect();
                return Some(serde_json::from_slice(&line).expect("watch line is a JSON event"));
            }
            if self.ended {
                return None;
            }
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Err(_) => return None,
                Ok(Some(Ok(chunk))) => self.buffer.extend_from_slice(&chunk),
                Ok(Some(Err(_))) | Ok(None) => self.ended = true,
            }
        }
    }

    /// Reads until the stream ends (or `wait` passes) and returns the events.
    pub async fn drain(&mut self, wait: Duration) -> Vec<WatchEvent> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut out = Vec::new();
        while let Some(e) = self
            .next(deadline.saturating_duration_since(tokio::time::Instant::now()))
            .await
        {
            out.push(e);
        }
        out
    }
}

/// Lines a child process prints, with when each arrived.
pub struct Lines {
    rx: std::sync::mpsc::Receiver<(Instant, String)>,
    pub seen: Vec<(Instant, String)>,
}

impl Lines {
    pub fn follow(stream: impl std::io::Read + Send + 'static) -> Lines {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if tx.send((Instant::now(), line)).is_err() {
                    return;
                }
            }
        });
        Lines {
            rx,
            seen: Vec::new(),
        }
    }

    /// Waits up to `wait` for a line matching `want`; returns it with its arrival time.
    pub fn wait_for(
        &mut self,
        wait: Duration,
        want: impl Fn(&str) -> bool,
    ) -> Option<(Instant, String)> {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(item) => {
                    self.seen.push(item.clone());
                    if want(&item.1) {
                        return Some(item);
                    }
                }
                Err(_) => return None,
            }
        }
    }

    /// Everything that arrived within `wait`.
    pub fn collect(&mut self, wait: Duration) -> Vec<String> {
        let _ = self.wait_for(wait, |_| false);
        self.seen.iter().map(|(_, l)| l.clone()).collect()
    }
}

/// A running `mubelet`, killed when dropped.
pub struct Mubelet {
    child: Option<Child>,
    pub health_port: u16,
    pub log: Lines,
    env: Vec<(String, String)>,
}

impl Mubelet {
    /// Starts an agent for `node` against `server`, beating every `interval`.
    pub fn start(server: &str, node: &str, interval: &str) -> Mubelet {
        Self::start_with(server, node, interval, &[])
    }

    /// `start`, with more environment (`MUBELET_CA_FILE`, ...).
    pub fn start_with(server: &str, node: &str, interval: &str, extra: &[(&str, &str)]) -> Mubelet {
        let health_port = free_port();
        let mut env = vec![
            ("MUBELET_NODE_NAME".to_string(), node.to_string()),
            ("MUBE_API_SERVER".to_string(), server.to_string()),
            (
                "MUBELET_HEARTBEAT_INTERVAL".to_string(),
                interval.to_string(),
            ),
            (
                "MUBELET_HEALTH_LISTEN".to_string(),
                format!("127.0.0.1:{health_port}"),
            ),
            ("MUBELET_SHUTDOWN_TIMEOUT".to_string(), "2s".to_string()),
            // mube-proxy off unless a test turns it on: agents of tests
            // running side by side on one machine must not program each
            // other's Service addresses (nor leave tables behind).
            ("MUBELET_PROXY_MODE".to_string(), "off".to_string()),
        ];
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let (child, log) = Self::spawn(&env);
        Mubelet {
            child: Some(child),
            health_port,
            log,
            env,
        }
    }

    fn spawn(env: &[(String, String)]) -> (Child, Lines) {
        let mut child = Command::new(bin("mubelet"))
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start mubelet");
        let log = Lines::follow(child.stdout.take().expect("stdout"));
        if let Some(err) = child.stderr.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    eprintln!("mubelet stderr: {line}");
                }
            });
        }
        (child, log)
    }

    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the agent first");
        let (child, log) = Self::spawn(&self.env);
        self.child = Some(child);
        self.log = log;
    }

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn wait(&mut self, wait: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + wait;
        let child = self.child.as_mut()?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `GET /status` of the agent's health endpoint.
    pub async fn status(&self) -> Value {
        reqwest::get(format!("http://127.0.0.1:{}/status", self.health_port))
            .await
            .expect("mubelet /status")
            .json()
            .await
            .expect("status JSON")
    }
}

impl Drop for Mubelet {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Runs `mubectl` to completion: (exit code, stdout, stderr).
pub fn mubectl(server: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin("mubectl"))
        .arg("--server")
        .arg(server)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run mubectl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A long-running `mubectl` (for `get -w`), killed when dropped.
pub struct MubectlWatch {
    child: Child,
    pub out: Lines,
    pub err: Lines,
}

impl MubectlWatch {
    pub fn start(server: &str, args: &[&str]) -> MubectlWatch {
        let mut child = Command::new(bin("mubectl"))
            .arg("--server")
            .arg(server)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start mubectl");
        let out = Lines::follow(child.stdout.take().expect("stdout"));
        let err = Lines::follow(child.stderr.take().expect("stderr"));
        MubectlWatch { child, out, err }
    }
}

impl Drop for MubectlWatch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The audit events the server has written to `<dataDir>/audit.log`, once
/// there are at least `n` (the writer flushes every 50 ms); at most 5 s.
pub async fn audit_lines(server: &ApiServer, n: usize) -> Vec<Value> {
    let path = server.data_dir().join("audit.log");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("an audit line is JSON"))
            .collect();
        if lines.len() >= n {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "{} audit lines, wanted {n}:\n{text}",
            lines.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The real `kubectl` (or `MUBE_KUBECTL`) with the server's admin
/// kubeconfig and a cache of its own.
pub struct Kubectl {
    pub kubeconfig: PathBuf,
    pub cache: tempfile::TempDir,
}

impl Kubectl {
    pub fn new(server: &ApiServer) -> Kubectl {
        let kubeconfig = server.data_dir().join("kubeconfig");
        assert!(
            kubeconfig.exists(),
            "the API server must write {}",
            kubeconfig.display()
        );
        Kubectl {
            kubeconfig,
            cache: tempfile::tempdir().unwrap(),
        }
    }

    pub fn command(&self, args: &[&str]) -> Command {
        // MUBE_KUBECTL picks another kubectl (e.g. kubectl.1.27) for the same tests.
        let binary = std::env::var("MUBE_KUBECTL").unwrap_or_else(|_| "kubectl".to_string());
        let mut cmd = Command::new(binary);
        cmd.env("KUBECONFIG", &self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.cache.path())
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    /// Runs to completion: (exit code, stdout, stderr).
    pub fn run(&self, args: &[&str]) -> (i32, String, String) {
        let out = self
            .command(args)
            .output()
            .expect("kubectl runs (is it on PATH?)");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs and requires success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.run(args);
        assert_eq!(code, 0, "kubectl {args:?} failed:\n{err}\n{out}");
        out
    }

    /// Starts a long-running kubectl (`get -w`) and follows its output.
    pub fn follow(&self, args: &[&str]) -> (std::process::Child, Lines) {
        let mut child = self
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let lines = Lines::follow(child.stdout.take().unwrap());
        (child, lines)
    }
}

/// The whitespace-separated columns of each line.
pub fn table(out: &str) -> Vec<Vec<String>> {
    out.lines()
        .map(|l| l.split_whitespace().map(String::from).collect())
        .collect()
}

/// `mubectl --kubeconfig <the admin's> ARGS`: (exit code, stdout, stderr).
pub fn admin_mubectl(server: &ApiServer, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin("mubectl"))
        .arg("--kubeconfig")
        .arg(server.data_dir().join("kubeconfig"))
        .args(args)
        .output()
        .expect("run mubectl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A join token made with the admin kubeconfig.
pub fn join_token(server: &ApiServer, ttl: &str) -> String {
    let (code, out, err) = admin_mubectl(server, &["token", "create", "--ttl", ttl]);
    assert_eq!(code, 0, "token create: {err}");
    out.trim().to_string()
}

/// containerd's socket: `MUBE_CONTAINERD_ENDPOINT`, or the default one.
pub fn containerd_endpoint() -> String {
    std::env::var("MUBE_CONTAINERD_ENDPOINT")
        .unwrap_or_else(|_| "unix:///run/containerd/containerd.sock".into())
}

/// Starts containerd and imports the images, once per test binary.
pub fn containerd() {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let socket = containerd_endpoint().trim_start_matches("unix://").to_string();
        let out = Command::new(root.join("scripts/containerd.sh"))
            .env("CONTAINERD_ADDRESS", &socket)
            .current_dir(&root)
            .output()
            .expect("run scripts/containerd.sh");
        assert!(
            out.status.success(),
            "scripts/containerd.sh failed (containerd, runc, containernetworking-plugins and busybox-static are needed; CI installs them):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

/// The runtime's containers (sandboxes too) labelled with `node`.
pub fn runtime_containers(node: &str) -> Vec<String> {
    let socket = containerd_endpoint()
        .trim_start_matches("unix://")
        .to_string();
    let filter = format!("labels.\"io.mube.node\"=={node}");
    let out = Command::new("ctr")
        .args([
            "--address",
            &socket,
            "-n",
            "k8s.io",
            "containers",
            "ls",
            "-q",
            &filter,
        ])
        .output()
        .expect("ctr");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// In Prometheus text `text`: the sum of the samples of `name` whose labels include every pair of
/// `labels` (0 when there is none).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = match series.split_once('{') {
                Some((m, rest)) => (m, rest),
                None => (series, ""),
            };
            (metric == name
                && labels.iter().all(|(k, v)| {
                    // A whole label: `resource=""` must not match `subresource=""`.
                    let pair = format!("{k}=\"{v}\"");
                    rest.starts_with(&pair) || rest.contains(&format!(",{pair}"))
                }))
            .then(|| value.parse::<f64>().ok())
            .flatten()
        })
        .sum()
}

/// GET `url` (a component's `/metrics`): its text, or "" while nothing answers.
pub async fn scrape(url: &str) -> String {
    match reqwest::get(url).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Pod watches by `spec.nodeName` (held on `watch_api`, while `write`
/// takes the writes): each receives exactly its node's events (a pod bound
/// to the node is ADDED, one that leaves `spec.nodeName=` is DELETED
/// there), within its namespace; 50 watches of other nodes get nothing;
/// and a watch that starts in the past reads the same from history before
/// it joins the feed.
pub async fn indexed_watches_get_exactly_their_nodes_events(watch_api: &Api, write: &Api) {
    let ns =
        serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "other"}});
    assert_eq!(write.post("/api/v1/namespaces", &ns).await.code, 201);
    const PODS: &str = "/api/v1/pods";
    const DEFAULT: &str = "/api/v1/namespaces/default/pods";
    let start = rv(&watch_api.get(PODS).await.body);
    let from = |selector: &str| format!("resourceVersion={start}&fieldSelector={selector}");
    let mut node_a = watch_api.watch(PODS, &from("spec.nodeName%3Dnode-a")).await;
    let mut node_a_default = watch_api
        .watch(DEFAULT, &from("spec.nodeName%3Dnode-a"))
        .await;
    let mut node_b = watch_api
        .watch(PODS, &from("spec.nodeName%3D%3Dnode-b"))
        .await;
    let mut unscheduled = watch_api.watch(PODS, &from("spec.nodeName%3D")).await;
    let mut everything = watch_api
        .watch(PODS, &format!("resourceVersion={start}"))
        .await;
    // Many watchers of other nodes, which nothing here concerns.
    let mut others = Vec::new();
    for i in 0..50 {
        others.push(
            watch_api
                .watch(PODS, &from(&format!("spec.nodeName%3Dnode-x{i}")))
                .await,
        );
    }

    let pod = |ns: &str, name: &str, node: Option<&str>| {
        let mut spec =
            serde_json::json!({"containers": [{"name": "c", "image": "mube.local/busybox"}]});
        if let Some(node) = node {
            spec["nodeName"] = serde_json::json!(node);
        }
        let p = serde_json::json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns}, "spec": spec});
        (format!("/api/v1/namespaces/{ns}/pods"), p)
    };
    for (ns, name, node) in [
        ("default", "p1", Some("node-a")),
        ("default", "p2", Some("node-b")),
        ("default", "p3", None),
        ("other", "q1", Some("node-a")),
    ] {
        let (path, p) = pod(ns, name, node);
        let r = write.post(&path, &p).await;
        assert_eq!(r.code, 201, "{}", r.body);
    }
    let binding = serde_json::json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p3"},
        "target": {"apiVersion": "v1", "kind": "Node", "name": "node-a"}});
    let r = write.post(&format!("{DEFAULT}/p3/binding"), &binding).await;
    assert_eq!(r.code, 201, "{}", r.body);
    let r = write
        .raw(
            reqwest::Method::PATCH,
            &format!("{DEFAULT}/p1"),
            "application/merge-patch+json",
            br#"{"metadata": {"labels": {"seen": "yes"}}}"#.to_vec(),
        )
        .await;
    assert_eq!(r.code, 200, "{}", r.body);
    for path in [
        format!("{DEFAULT}/p2"),
        "/api/v1/namespaces/other/pods/q1".to_string(),
    ] {
        let r = write.delete(&format!("{path}?gracePeriodSeconds=0")).await;
        assert_eq!(r.code, 200, "{}", r.body);
    }
    // The last write: every watch has had all it will get once it is seen.
    let (path, p) = pod("default", "last", None);
    assert_eq!(write.post(&path, &p).await.code, 201);

    async fn seen(watch: &mut Watch) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(e) = watch.next(Duration::from_millis(700)).await {
            let name = e.object["metadata"]["name"].as_str().unwrap_or("?");
            out.push(format!("{:?} {name}", e.type_));
        }
        out
    }
    let expect = |events: &[&str]| events.iter().map(|e| e.to_string()).collect::<Vec<_>>();
    let want_a = expect(&[
        "Added p1",
        "Added q1",
        "Added p3",
        "Modified p1",
        "Deleted q1",
    ]);
    assert_eq!(seen(&mut node_a).await, want_a);
    assert_eq!(
        seen(&mut node_a_default).await,
        expect(&["Added p1", "Added p3", "Modified p1"])
    );
    assert_eq!(seen(&mut node_b).await, expect(&["Added p2", "Deleted p2"]));
    assert_eq!(
        seen(&mut unscheduled).await,
        expect(&["Added p3", "Deleted p3", "Added last"])
    );
    assert_eq!(
        seen(&mut everything).await,
        expect(&[
            "Added p1",
            "Added p2",
            "Added p3",
            "Added q1",
            "Modified p3",
            "Modified p1",
            "Deleted p2",
            "Deleted q1",
            "Added last"
        ])
    );
    // Drained side by side: each waits out its quiet spell at once.
    let quiet = futures::future::join_all(others.iter_mut().map(seen)).await;
    assert!(quiet.iter().all(Vec::is_empty), "{quiet:?}");
    // Opened now from the same start: the same, read from history first.
    let mut late = watch_api.watch(PODS, &from("spec.nodeName%3Dnode-a")).await;
    assert_eq!(seen(&mut late).await, want_a);
}
