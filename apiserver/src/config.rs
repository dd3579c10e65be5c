//! `configs/apiserver.yaml` and the environment, with the original Mube's names.
//!
//! Every mistake stops start-up with one message naming the file (or the
//! environment variable) and the field.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::nodes::RegisteredNode;

pub const ENV_CONFIG: &str = "MUBE_APISERVER_CONFIG";
pub const ENV_DATA_DIR: &str = "MUBE_APISERVER_DATA_DIR";
pub const ENV_SHUTDOWN_TIMEOUT: &str = "MUBE_APISERVER_SHUTDOWN_TIMEOUT";
pub const ENV_NOTREADY_TIMEOUT: &str = "MUBE_NODE_NOTREADY_TIMEOUT";
pub const DEFAULT_CONFIG: &str = "configs/apiserver.yaml";

/// The file as written. Unknown fields are errors, so a typo never silently
/// falls back to a default.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ConfigFile {
    listen_address: Option<String>,
    data_dir: Option<String>,
    #[serde(default)]
    nodes: Vec<NodeEntry>,
    /// Change events kept for resuming watches (default 100000).
    history_retention: Option<u64>,
    /// ... and none older than this (default 5m).
    history_max_age: Option<String>,
    /// Events a watcher may fall behind before it is dropped (default 4096).
    watch_buffer: Option<usize>,
    /// How often watches that asked for bookmarks get one (default 1m).
    watch_bookmark_interval: Option<String>,
    /// How long events queued for a watch may wait for its client to take
    /// them before the watch is closed (default 10s).
    watch_stuck_timeout: Option<String>,
    /// Bytes per write-ahead log segment (default 32Mi); space is freed a
    /// segment at a time.
    log_segment_bytes: Option<u64>,
    /// How long a list or watch from a resourceVersion the server has not
    /// reached waits for it before the answer is 504 (default 3s, as
    /// Kubernetes).
    resource_version_wait: Option<String>,
    /// Requests served at once, watches and heartbeats aside; past it, 429
    /// (default 400, as kube-apiserver's --max-requests-inflight).
    /// Heartbeats have a cap of the same size of their own, so that a flood
    /// of other requests never turns them away (Kubernetes' `node-high`
    /// priority level).
    max_requests_in_flight: Option<usize>,
    /// Watches open at once; past it, 429 (default 100000).
    max_watches: Option<usize>,
    /// How long a request other than a watch may take before it is 504
    /// (default 60s, as kube-apiserver's --request-timeout).
    request_timeout: Option<String>,
    /// How long a connection may take to send a request's headers before it
    /// is closed (default 30s).
    request_header_timeout: Option<String>,
    /// HTTPS: a generated CA and serving certificate, or the given files.
    tls: Option<TlsEntry>,
    /// The audit log (on by default, to <dataDir>/audit.log, 100 MB a file).
    audit: Option<AuditEntry>,
    /// Static tokens, and whether unauthenticated requests get in.
    authentication: Option<AuthenticationEntry>,
    /// Who may do what (default mode `Node,RBAC`).
    authorization: Option<AuthorizationEntry>,
    /// Pod addresses: each node gets a /24 of this as its `spec.podCIDR`
    /// (default 10.244.0.0/16, as kube-controller-manager's
    /// --cluster-cidr is commonly set).
    #[serde(rename = "clusterCIDR")]
    cluster_cidr: Option<String>,
    /// Services' cluster IPs (default 10.96.0.0/16, as kube-apiserver's
    /// --service-cluster-ip-range is commonly set); the first address is
    /// the `kubernetes` Service's.
    #[serde(rename = "serviceCIDR")]
    service_cidr: Option<String>,
    /// NodePort Services' ports (default 30000-32767, as kube-apiserver's
    /// --service-node-port-range).
    service_node_port_range: Option<String>,
    /// The address the `kubernetes` Service's endpoints name: how pods
    /// reach this server (default: the listen address, or this machine's
    /// first non-loopback address when listening on all of them).
    advertise_address: Option<String>,
    /// Where objects live: mube's own log in dataDir (the default), or
    /// etcd.
    storage: Option<StorageEntry>,
    /// How API servers that share a store (etcd) elect the one that runs
    /// their controllers (kube-controller-manager's `--leader-elect-*`
    /// defaults: 15s, 10s, 2s).
    leader_election: Option<LeaderElectionEntry>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct LeaderElectionEntry {
    lease_duration: Option<String>,
    renew_deadline: Option<String>,
    retry_period: Option<String>,
}

/// `leaderElection` resolved: for the API servers' own controllers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaderElection {
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct StorageEntry {
    backend: Option<String>,
    etcd: Option<EtcdEntry>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct EtcdEntry {
    #[serde(default)]
    endpoints: Vec<String>,
    prefix: Option<String>,
    ca_file: Option<String>,
    cert_file: Option<String>,
    key_file: Option<String>,
    compaction_interval: Option<String>,
}

/// `storage` resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Storage {
    /// mube's write-ahead log in dataDir.
    Log,
    /// An embedded sled database in dataDir.
    Sled,
    Etcd(EtcdStorage),
}

impl Storage {
    /// Whether other API servers may share this store (etcd): then
    /// per-server state needs its cluster answer.
    pub fn shared(&self) -> bool {
        matches!(self, Storage::Etcd(_))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdStorage {
    pub endpoints: Vec<String>,
    /// Where keys live (default `/registry`, as Kubernetes).
    pub prefix: String,
    /// TLS to etcd: the CA that signed its certificate, and this server's
    /// client certificate and key.
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// How often one API server compacts etcd (default 5m, as
    /// kube-apiserver; `0s`: never).
    pub compaction_interval: Option<Duration>,
}

impl StorageEntry {
    fn resolve(self, file: &str) -> Result<Storage, String> {
        let backend = self.backend.as_deref().unwrap_or("log");
        match (backend, self.etcd) {
            ("log", None) => Ok(Storage::Log),
            ("sled", None) => Ok(Storage::Sled),
            (backend @ ("log" | "sled"), Some(_)) => Err(format!(
                "{file}: storage.etcd: only for storage.backend: etcd (the backend is {backend})"
            )),
            ("etcd", None) => Err(format!(
                "{file}: storage.etcd.endpoints: required with storage.backend: etcd"
            )),
            ("etcd", Some(e)) => {
                if e.endpoints.is_empty() {
                    return Err(format!(
                        "{file}: storage.etcd.endpoints: required with storage.backend: etcd"
                    ));
                }
                for (i, url) in e.endpoints.iter().enumerate() {
                    let ok = url
                        .strip_prefix("http://")
                        .or_else(|| url.strip_prefix("https://"))
                        .is_some_and(|rest| !rest.is_empty());
                    if !ok {
                        return Err(format!(
                            "{file}: storage.etcd.endpoints[{i}]: {url:?} is not an http:// or https:// URL"
                        ));
                    }
                }
                let prefix = e.prefix.unwrap_or_else(|| "/registry".into());
                if !prefix.starts_with('/') || prefix.len() < 2 {
                    return Err(format!(
                        "{file}: storage.etcd.prefix: {prefix:?} must start with / and name something"
                    ));
                }
                if e.cert_file.is_some() != e.key_file.is_some() {
                    return Err(format!(
                        "{file}: storage.etcd.{}: required with storage.etcd.{}",
                        if e.cert_file.is_some() {
                            "keyFile"
                        } else {
                            "certFile"
                        },
                        if e.cert_file.is_some() {
                            "certFile"
                        } else {
                            "keyFile"
                        },
                    ));
                }
                let compaction_interval = match e.compaction_interval.as_deref() {
                    None => Some(Duration::from_secs(300)),
                    Some(v) => {
                        let d = mube_apis::duration::parse(v).map_err(|_| {
                            format!("{file}: storage.etcd.compactionInterval: invalid duration {v:?}; use forms like 5m, 0s (never)")
                        })?;
                        (!d.is_zero()).then_some(d)
                    }
                };
                Ok(Storage::Etcd(EtcdStorage {
                    endpoints: e.endpoints,
                    prefix: prefix.trim_end_matches('/').to_string(),
                    ca_file: e.ca_file.map(PathBuf::from),
                    cert_file: e.cert_file.map(PathBuf::from),
                    key_file: e.key_file.map(PathBuf::from),
                    compaction_interval,
                }))
            }
            (other, _) => Err(format!(
                "{file}: storage.backend: unknown backend {other:?}; use log, sled or etcd"
            )),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct AuthenticationEntry {
    token_file: Option<String>,
    anonymous: Option<bool>,
    /// How long the client certificates signed for nodes last (default
    /// 8760h, as kube-controller-manager's --cluster-signing-duration).
    #[serde(rename = "nodeCertificateTTL")]
    node_certificate_ttl: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct AuthorizationEntry {
    mode: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct AuditEntry {
    enabled: Option<bool>,
    path: Option<String>,
    #[serde(rename = "maxSizeMB")]
    max_size_mb: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TlsEntry {
    enabled: Option<bool>,
    cert_file: Option<String>,
    key_file: Option<String>,
    ca_file: Option<String>,
    #[serde(default)]
    sans: Vec<String>,
}

/// `audit` resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audit {
    /// `None`: `<dataDir>/audit.log`.
    pub path: Option<PathBuf>,
    pub max_bytes: u64,
}

/// `tls` resolved: on, with the user's files or generated ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    pub files: Option<crate::pki::UserFiles>,
    /// Extra names for the generated serving certificate.
    pub sans: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeEntry {
    name: String,
    ip: String,
    port: i64,
}

/// Whether the API server speaks HTTPS when the config does not say:
/// secure by default; plain HTTP only when the config says so.
const DEFAULT_TLS: bool = true;

/// The API server's settings, resolved and checked.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen_address: SocketAddr,
    pub data_dir: PathBuf,
    pub nodes: Vec<RegisteredNode>,
    pub history_retention: u64,
    pub history_max_age: Duration,
    pub watch_buffer: usize,
    pub watch_bookmark_interval: Duration,
    pub watch_stuck_timeout: Duration,
    pub log_segment_bytes: u64,
    pub resource_version_wait: Duration,
    pub max_requests_in_flight: usize,
    pub max_watches: usize,
    pub request_timeout: Duration,
    pub request_header_timeout: Duration,
    /// `None`: plain HTTP (`tls: {enabled: false}`).
    pub tls: Option<Tls>,
    /// `None`: no audit log (`audit: {enabled: false}`).
    pub audit: Option<Audit>,
    /// `authentication.tokenFile`: kube-apiserver's token CSV.
    pub token_file: Option<PathBuf>,
    /// `authentication.anonymous`: unauthenticated requests get in as
    /// `system:anonymous` (default false: they get 401).
    pub anonymous: bool,
    /// `authentication.nodeCertificateTTL`.
    pub node_certificate_ttl: Duration,
    /// `authorization.mode`, in order.
    pub authorization: Vec<crate::auth::Mode>,
    /// `--repair-log`: start even though the log is damaged, cutting it at
    /// the first bad record.
    pub repair_log: bool,
    pub shutdown_timeout: Duration,
    pub notready_timeout: Duration,
    /// `clusterCIDR`: where nodes' pod CIDRs come from.
    pub cluster_cidr: crate::registry::pod_cidr::ClusterCidr,
    /// `serviceCIDR` and `serviceNodePortRange`.
    pub service_cidr: crate::registry::service_ranges::ServiceCidr,
    pub node_ports: crate::registry::service_ranges::NodePortRange,
    /// `advertiseAddress`, if set.
    pub advertise_address: Option<std::net::IpAddr>,
    pub storage: Storage,
    pub leader_election: LeaderElection,
}

fn duration_env(
    env: &dyn Fn(&str) -> Option<String>,
    name: &str,
    default: Duration,
) -> Result<Duration, String> {
    match env(name) {
        None => Ok(default),
        Some(v) => {
            let d = mube_apis::duration::parse(&v).map_err(|e| format!("{name}: {e}"))?;
            if d.is_zero() {
                return Err(format!("{name}: must be greater than zero"));
            }
            Ok(d)
        }
    }
}

impl Config {
    /// Loads from the process environment.
    pub fn from_env() -> Result<Config, String> {
        let mut config = Config::load(&|name| std::env::var(name).ok().filter(|v| !v.is_empty()))?;
        for arg in std::env::args().skip(1) {
            match arg.as_str() {
                "--repair-log" => config.repair_log = true,
                other => {
                    return Err(format!(
                        "unknown argument {other:?}; the only flag is --repair-log (cut a damaged write-ahead log at its first bad record); everything else is configured in {ENV_CONFIG}"
                    ))
                }
            }
        }
        Ok(config)
    }

    /// Loads with `env` as the environment (tests pass their own).
    pub fn load(env: &dyn Fn(&str) -> Option<String>) -> Result<Config, String> {
        let path = env(ENV_CONFIG).unwrap_or_else(|| DEFAULT_CONFIG.to_string());
        let text = std::fs::read_to_string(&path).map_err(|e| {
            format!("{path}: cannot read the config file ({e}); set {ENV_CONFIG} to its path")
        })?;
        let mut config = Config::parse(Path::new(&path), &text)?;
        if let Some(dir) = env(ENV_DATA_DIR) {
            config.data_dir = PathBuf::from(dir);
        }
        config.shutdown_timeout = duration_env(env, ENV_SHUTDOWN_TIMEOUT, Duration::from_secs(5))?;
        config.notready_timeout = duration_env(env, ENV_NOTREADY_TIMEOUT, Duration::from_secs(30))?;
        Ok(config)
    }

    /// Parses and checks the YAML; `path` is only used in messages.
    pub fn parse(path: &Path, text: &str) -> Result<Config, String> {
        let file = path.display();
        let raw: ConfigFile = if text.trim().is_empty() {
            serde_yaml::from_str("{}")
        } else {
            serde_yaml::from_str(text)
        }
        .map_err(|e| format!("{file}: {e}"))?;
        let listen_address =
            mube_apis::address::parse_listen(raw.listen_address.as_deref().unwrap_or(":8080"))
                .map_err(|e| format!("{file}: listenAddress: {e}"))?;
        let mut seen = HashSet::new();
        let mut nodes = Vec::new();
        for (i, n) in raw.nodes.iter().enumerate() {
            let field = |f: &str| format!("{file}: nodes[{i}].{f}");
            mube_apis::validation::dns1123_subdomain(&n.name)
                .map_err(|e| format!("{}: {e}", field("name")))?;
            if !seen.insert(n.name.clone()) {
                return Err(format!(
                    "{}: duplicate node name {:?}",
                    field("name"),
                    n.name
                ));
            }
            let ip: IpAddr =
                n.ip.trim().parse().map_err(|_| {
                    format!("{}: {:?} is not a valid IP address", field("ip"), n.ip)
                })?;
            let port = u16::try_from(n.port)
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| {
                    format!("{}: {} is out of range (1-65535)", field("port"), n.port)
                })?;
            nodes.push(RegisteredNode {
                name: n.name.clone(),
                ip,
                port,
            });
        }
        let positive_duration = |field: &str, v: Option<&str>, default: Duration| match v {
            None => Ok(default),
            Some(v) => mube_apis::duration::parse(v)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    format!(
                        "{file}: {field}: invalid duration {v:?}; use forms like 500ms, 5s, 1m30s"
                    )
                }),
        };
        let watch_bookmark_interval = positive_duration(
            "watchBookmarkInterval",
            raw.watch_bookmark_interval.as_deref(),
            Duration::from_secs(60),
        )?;
        let watch_stuck_timeout = positive_duration(
            "watchStuckTimeout",
            raw.watch_stuck_timeout.as_deref(),
            Duration::from_secs(10),
        )?;
        let history_max_age = positive_duration(
            "historyMaxAge",
            raw.history_max_age.as_deref(),
            Duration::from_secs(300),
        )?;
        let resource_version_wait = positive_duration(
            "resourceVersionWait",
            raw.resource_version_wait.as_deref(),
            Duration::from_secs(3),
        )?;
        let request_timeout = positive_duration(
            "requestTimeout",
            raw.request_timeout.as_deref(),
            Duration::from_secs(60),
        )?;
        let request_header_timeout = positive_duration(
            "requestHeaderTimeout",
            raw.request_header_timeout.as_deref(),
            Duration::from_secs(30),
        )?;
        let node_certificate_ttl = positive_duration(
            "authentication.nodeCertificateTTL",
            raw.authentication
                .as_ref()
                .and_then(|a| a.node_certificate_ttl.as_deref()),
            Duration::from_secs(365 * 24 * 3600),
        )?;
        let cluster_cidr = crate::registry::pod_cidr::ClusterCidr::parse(
            raw.cluster_cidr.as_deref().unwrap_or("10.244.0.0/16"),
        )
        .map_err(|e| format!("{file}: clusterCIDR: {e}"))?;
        let service_cidr = crate::registry::service_ranges::ServiceCidr::parse(
            raw.service_cidr.as_deref().unwrap_or("10.96.0.0/16"),
        )
        .map_err(|e| format!("{file}: serviceCIDR: {e}"))?;
        let node_ports = crate::registry::service_ranges::NodePortRange::parse(
            raw.service_node_port_range
                .as_deref()
                .unwrap_or("30000-32767"),
        )
        .map_err(|e| format!("{file}: serviceNodePortRange: {e}"))?;
        let advertise_address = raw
            .advertise_address
            .as_deref()
            .map(|a| {
                a.trim()
                    .parse::<std::net::IpAddr>()
                    .map_err(|_| format!("{file}: advertiseAddress: {a:?} is not an IP address"))
            })
            .transpose()?;
        let authorization = crate::auth::parse_modes(
            raw.authorization
                .as_ref()
                .and_then(|a| a.mode.as_deref())
                .unwrap_or("Node,RBAC"),
        )
        .map_err(|e| format!("{file}: {e}"))?;
        let tls_entry = raw.tls.unwrap_or_default();
        let tls = if tls_entry.enabled.unwrap_or(DEFAULT_TLS) {
            let files = match (tls_entry.cert_file, tls_entry.key_file, tls_entry.ca_file) {
                (None, None, None) => None,
                (Some(cert), Some(key), Some(ca)) => Some(crate::pki::UserFiles {
                    cert: cert.into(),
                    key: key.into(),
                    ca: ca.into(),
                }),
                _ => {
                    return Err(format!(
                        "{file}: tls: certFile, keyFile and caFile go together (all three, or none to generate them)"
                    ))
                }
            };
            Some(Tls {
                files,
                sans: tls_entry.sans,
            })
        } else {
            None
        };
        let audit_entry = raw.audit.unwrap_or_default();
        let audit = if audit_entry.enabled.unwrap_or(true) {
            if audit_entry.max_size_mb == Some(0) {
                return Err(format!("{file}: audit.maxSizeMB: must be at least 1"));
            }
            Some(Audit {
                path: audit_entry.path.map(PathBuf::from),
                max_bytes: audit_entry.max_size_mb.unwrap_or(100) * 1024 * 1024,
            })
        } else {
            None
        };
        if raw.max_requests_in_flight == Some(0) {
            return Err(format!("{file}: maxRequestsInFlight: must be at least 1"));
        }
        if raw.max_watches == Some(0) {
            return Err(format!("{file}: maxWatches: must be at least 1"));
        }
        if raw.history_retention == Some(0) {
            return Err(format!("{file}: historyRetention: must be at least 1"));
        }
        if raw.log_segment_bytes.is_some_and(|b| b < 4096) {
            return Err(format!("{file}: logSegmentBytes: must be at least 4096"));
        }
        if raw.watch_buffer == Some(0) {
            return Err(format!("{file}: watchBuffer: must be at least 1"));
        }
        let storage = raw.storage.unwrap_or_default().resolve(&file.to_string())?;
        let election = raw.leader_election.unwrap_or_default();
        let leader_election = LeaderElection {
            lease_duration: positive_duration(
                "leaderElection.leaseDuration",
                election.lease_duration.as_deref(),
                Duration::from_secs(15),
            )?,
            renew_deadline: positive_duration(
                "leaderElection.renewDeadline",
                election.renew_deadline.as_deref(),
                Duration::from_secs(10),
            )?,
            retry_period: positive_duration(
                "leaderElection.retryPeriod",
                election.retry_period.as_deref(),
                Duration::from_secs(2),
            )?,
        };
        let mut check = mube_client::leader::Election::new("check");
        check.lease_duration = leader_election.lease_duration;
        check.renew_deadline = leader_election.renew_deadline;
        check.retry_period = leader_election.retry_period;
        check
            .check()
            .map_err(|e| format!("{file}: leaderElection: {e}"))?;
        Ok(Config {
            listen_address,
            data_dir: PathBuf::from(raw.data_dir.unwrap_or_else(|| "data".to_string())),
            nodes,
            history_retention: raw.history_retention.unwrap_or(100_000),
            history_max_age,
            watch_buffer: raw.watch_buffer.unwrap_or(4096),
            watch_bookmark_interval,
            watch_stuck_timeout,
            log_segment_bytes: raw.log_segment_bytes.unwrap_or(32 * 1024 * 1024),
            resource_version_wait,
            max_requests_in_flight: raw.max_requests_in_flight.unwrap_or(400),
            max_watches: raw.max_watches.unwrap_or(100_000),
            request_timeout,
            request_header_timeout,
            tls,
            audit,
            token_file: raw
                .authentication
                .as_ref()
                .and_then(|a| a.token_file.as_ref())
                .map(PathBuf::from),
            anonymous: raw
                .authentication
                .as_ref()
                .and_then(|a| a.anonymous)
                .unwrap_or(false),
            node_certificate_ttl,
            authorization,
            repair_log: false,
            shutdown_timeout: Duration::from_secs(5),
            notready_timeout: Duration::from_secs(30),
            cluster_cidr,
            service_cidr,
            node_ports,
            advertise_address,
            storage,
            leader_election,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(Path::new("apiserver.yaml"), text)
    }

    #[test]
    fn storage_backends_and_election() {
        assert_eq!(parse("").unwrap().storage, Storage::Log);
        assert_eq!(
            parse("storage: {backend: sled}").unwrap().storage,
            Storage::Sled
        );
        let c = parse("leaderElection: {leaseDuration: 3s, renewDeadline: 2s, retryPeriod: 500ms}")
            .unwrap();
        assert_eq!(c.leader_election.lease_duration, Duration::from_secs(3));
        assert_eq!(c.leader_election.retry_period, Duration::from_millis(500));
        assert_eq!(
            parse("").unwrap().leader_election.lease_duration,
            Duration::from_secs(15)
        );
    }

    #[test]
    fn original_file() {
        let c = parse("listenAddress: \":8080\"\ndataDir: data\nnodes:\n  - name: mube-node-1\n    ip: 127.0.0.1\n    port: 10250\n").unwrap();
        assert_eq!(c.listen_address, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(c.nodes.len(), 1);
        assert_eq!(c.nodes[0].port, 10250);
    }

    #[test]
    fn errors_name_file_and_field() {
        let cases = [
            ("listenAddress: [", "apiserver.yaml"),
            ("listenAdress: \":1\"", "unknown field `listenAdress`"),
            (
                "nodes:\n - {name: a, ip: 1.2.3.4, port: 1}\n - {name: a, ip: 1.2.3.4, port: 2}",
                "nodes[1].name: duplicate",
            ),
            ("nodes:\n - {name: a, ip: 1.2.3, port: 1}", "nodes[0].ip"),
            (
                "nodes:\n - {name: a, ip: 1.2.3.4, port: 70000}",
                "nodes[0].port: 70000 is out of range",
            ),
            (
                "nodes:\n - {name: a, ip: 1.2.3.4, port: 0}",
                "nodes[0].port",
            ),
            (
                "nodes:\n - {name: A_b, ip: 1.2.3.4, port: 1}",
                "nodes[0].name",
            ),
            ("listenAddress: \"8080\"", "listenAddress"),
            ("watchBookmarkInterval: soon", "watchBookmarkInterval"),
            ("historyMaxAge: 0s", "historyMaxAge"),
            ("logSegmentBytes: 10", "logSegmentBytes"),
            ("storage: {backend: tape}", "storage.backend: unknown backend \"tape\""),
            ("storage: {backend: etcd}", "storage.etcd.endpoints: required"),
            (
                "storage: {backend: etcd, etcd: {endpoints: []}}",
                "storage.etcd.endpoints: required",
            ),
            (
                "storage: {backend: etcd, etcd: {endpoints: [\"127.0.0.1:2379\"]}}",
                "storage.etcd.endpoints[0]",
            ),
            (
                "storage: {etcd: {endpoints: [\"http://a:2379\"]}}",
                "storage.etcd: only for storage.backend: etcd",
            ),
            (
                "storage: {backend: sled, etcd: {endpoints: [\"http://a:2379\"]}}",
                "storage.etcd: only for storage.backend: etcd (the backend is sled)",
            ),
            (
                "leaderElection: {leaseDuration: 2s, renewDeadline: 2s}",
                "leaderElection:",
            ),
            ("leaderElection: {retryPeriod: soon}", "leaderElection.retryPeriod"),
            (
                "storage: {backend: etcd, etcd: {endpoints: [\"http://a:2379\"], certFile: c.pem}}",
                "storage.etcd.keyFile: required with storage.etcd.certFile",
            ),
            (
                "storage: {backend: etcd, etcd: {endpoints: [\"http://a:2379\"], compactionInterval: often}}",
                "storage.etcd.compactionInterval",
            ),
            (
                "storage: {backend: etcd, etcd: {endpoints: [\"http://a:2379\"], prefix: registry}}",
                "storage.etcd.prefix",
            ),
        ];
        for (text, want) in cases {
            let e = parse(text).unwrap_err();
            assert!(e.starts_with("apiserver.yaml: "), "{e}");
            assert!(e.contains(want), "{text:?} gave {e:?}, expected {want:?}");
        }
    }

    #[test]
    fn environment_overrides_and_bad_durations() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, "dataDir: d1\n").unwrap();
        let p = path.display().to_string();
        let env = |vars: &'static [(&'static str, &'static str)]| {
            let p = p.clone();
            move |name: &str| {
                if name == ENV_CONFIG {
                    return Some(p.clone());
                }
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        let c = Config::load(&env(&[
            (ENV_DATA_DIR, "d2"),
            (ENV_NOTREADY_TIMEOUT, "1m30s"),
        ]))
        .unwrap();
        assert_eq!(c.data_dir, PathBuf::from("d2"));
        assert_eq!(c.notready_timeout, Duration::from_secs(90));
        let e = Config::load(&env(&[(ENV_SHUTDOWN_TIMEOUT, "fast")])).unwrap_err();
        assert!(e.starts_with(ENV_SHUTDOWN_TIMEOUT), "{e}");
    }
}
