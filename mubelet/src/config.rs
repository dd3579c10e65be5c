//! The agent's settings, from the environment, with the original Mube's
//! names and defaults. An invalid value stops start-up naming the variable.

use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Config {
    pub node_name: String,
    pub runtime: String,
    pub version: String,
    pub capacity: i64,
    /// `MUBE_API_SERVER`: one URL, or several separated by commas.
    pub api_servers: crate::servers::ApiServers,
    pub heartbeat_interval: Duration,
    pub health_listen: SocketAddr,
    pub shutdown_timeout: Duration,
    /// `MUBELET_CA_FILE`: the cluster CA (PEM) to trust for an https
    /// `MUBE_API_SERVER`, such as the API server's `<dataDir>/pki/ca.crt`.
    /// Without it, the system's roots.
    pub ca_pem: Option<Vec<u8>>,
    /// `MUBELET_TOKEN`, or the contents of `MUBELET_TOKEN_FILE`: a join
    /// token (`mubectl token create`), exchanged for a node certificate.
    pub token: Option<String>,
    /// `MUBELET_STATE_DIR`: where the node's key and certificate are kept
    /// (default /var/lib/mubelet).
    pub state_dir: std::path::PathBuf,
    /// Whether `MUBELET_RUNTIME` was given: if not, the heartbeat reports
    /// what the runtime says it is (`containerd://1.6.20`).
    pub runtime_given: bool,
    /// `MUBELET_CONTAINER_RUNTIME_ENDPOINT` (kubelet's
    /// `--container-runtime-endpoint`).
    pub runtime_endpoint: String,
    /// `MUBELET_RUNTIME_REQUEST_TIMEOUT`: the deadline of one CRI call.
    pub runtime_timeout: Duration,
    /// `MUBELET_POD_LOG_DIR`: where containers' logs are written (the
    /// kubelet's /var/log/pods).
    pub pod_log_dir: std::path::PathBuf,
    /// `MUBELET_CNI_CONF_DIR`: where the CNI config is written, the
    /// runtime's CNI conf_dir.
    pub cni_conf_dir: std::path::PathBuf,
    /// `MUBELET_RESTART_BACKOFF`: the first wait of the restart back-off
    /// (Kubernetes: 10s); it doubles up to 30 times that (5 min).
    pub restart_backoff: Duration,
    /// `MUBELET_SYNC_INTERVAL`: how often each pod is looked at without a
    /// change to it (containers that exit are noticed within this).
    pub sync_interval: Duration,
    /// `MUBELET_NODE_IP`: the node's address (default: the one it reaches
    /// the API server from).
    pub node_ip: Option<String>,
    /// `MUBELET_PROXY_MODE`: `nftables` (the default when pods run on a
    /// real runtime) or `off` (the default on a hollow node).
    pub proxy_mode: crate::proxy::Mode,
}

fn hostname() -> String {
    // Kubernetes lowercases the hostname for the node name; so do we.
    gethostname::gethostname()
        .to_string_lossy()
        .trim()
        .to_lowercase()
}

impl Config {
    pub fn from_env() -> Result<Config, String> {
        Config::load(&|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()))
    }

    /// Loads with `env` as the environment (tests pass their own).
    pub fn load(env: &dyn Fn(&str) -> Option<String>) -> Result<Config, String> {
        let text = |name: &str, default: &str| env(name).unwrap_or_else(|| default.to_string());
        let duration = |name: &str, default: &str| -> Result<Duration, String> {
            let d = mube_apis::duration::parse(&text(name, default))
                .map_err(|e| format!("{name}: {e}"))?;
            if d.is_zero() {
                return Err(format!("{name}: must be greater than zero"));
            }
            Ok(d)
        };

        let node_name = env("MUBELET_NODE_NAME").unwrap_or_else(hostname);
        mube_apis::validation::dns1123_subdomain(&node_name).map_err(|e| {
            format!("MUBELET_NODE_NAME: {node_name:?} is not a valid node name: {e}")
        })?;
        let capacity_text = text("MUBELET_CAPACITY", "10");
        let capacity: i64 = capacity_text
            .trim()
            .parse()
            .map_err(|_| format!("MUBELET_CAPACITY: {capacity_text:?} is not a whole number"))?;
        if capacity < 1 {
            return Err(format!(
                "MUBELET_CAPACITY: must be at least 1, got {capacity}"
            ));
        }
        let token = match (env("MUBELET_TOKEN"), env("MUBELET_TOKEN_FILE")) {
            (Some(_), Some(_)) => {
                return Err("MUBELET_TOKEN and MUBELET_TOKEN_FILE: give one, not both".into())
            }
            (Some(t), None) => Some(t.trim().to_string()),
            (None, Some(path)) => Some(
                std::fs::read_to_string(path.trim())
                    .map_err(|e| format!("MUBELET_TOKEN_FILE: cannot read {path:?}: {e}"))?
                    .trim()
                    .to_string(),
            ),
            (None, None) => None,
        };
        if let Some(t) = &token {
            if mube_apis::join_token::parse(t).is_none() {
                return Err("MUBELET_TOKEN: not a join token (<6 characters>.<16 characters>, a-z and 0-9; `mubectl token create` makes one)".into());
            }
        }
        // The original default is plain HTTP; an agent that joins with a
        // token talks to a secure server, so its default is HTTPS.
        let default_server = if token.is_some() {
            "https://127.0.0.1:8080"
        } else {
            "http://127.0.0.1:8080"
        };
        let api_servers =
            crate::servers::ApiServers::parse(text("MUBE_API_SERVER", default_server).trim())?;
        let health_listen =
            mube_apis::address::parse_listen(&text("MUBELET_HEALTH_LISTEN", ":10250"))
                .map_err(|e| format!("MUBELET_HEALTH_LISTEN: {e}"))?;
        let ca_pem = match env("MUBELET_CA_FILE") {
            None => None,
            Some(path) => Some(
                std::fs::read(path.trim())
                    .map_err(|e| format!("MUBELET_CA_FILE: cannot read {path:?}: {e}"))?,
            ),
        };
        let runtime_endpoint = text(
            "MUBELET_CONTAINER_RUNTIME_ENDPOINT",
            "unix:///run/containerd/containerd.sock",
        );
        // `fake://`: a hollow node's in-memory runtime.
        if runtime_endpoint != crate::fake_runtime::ENDPOINT {
            crate::cri::socket_path(&runtime_endpoint)
                .map_err(|e| format!("MUBELET_CONTAINER_RUNTIME_ENDPOINT: {e}"))?;
        }
        let node_ip = match env("MUBELET_NODE_IP") {
            None => None,
            Some(ip) => Some(
                ip.trim()
                    .parse::<std::net::IpAddr>()
                    .map_err(|_| format!("MUBELET_NODE_IP: {ip:?} is not an IP address"))?
                    .to_string(),
            ),
        };
        let default_mode = if runtime_endpoint == crate::fake_runtime::ENDPOINT {
            "off"
        } else {
            "nftables"
        };
        let proxy_mode = crate::proxy::Mode::parse(&text("MUBELET_PROXY_MODE", default_mode))
            .map_err(|e| format!("MUBELET_PROXY_MODE: {e}"))?;
        Ok(Config {
            proxy_mode,
            runtime_given: env("MUBELET_RUNTIME").is_some(),
            runtime_endpoint,
            runtime_timeout: duration("MUBELET_RUNTIME_REQUEST_TIMEOUT", "10s")?,
            pod_log_dir: text("MUBELET_POD_LOG_DIR", "/var/log/pods").into(),
            cni_conf_dir: text("MUBELET_CNI_CONF_DIR", "/etc/cni/net.d").into(),
            restart_backoff: duration("MUBELET_RESTART_BACKOFF", "10s")?,
            sync_interval: duration("MUBELET_SYNC_INTERVAL", "1s")?.max(Duration::from_millis(100)),
            node_ip,
            ca_pem,
            token,
            state_dir: text("MUBELET_STATE_DIR", "/var/lib/mubelet").into(),
            node_name,
            runtime: text("MUBELET_RUNTIME", "containerd"),
            version: text("MUBELET_VERSION", "0.1.0"),
            capacity,
            api_servers,
            heartbeat_interval: duration("MUBELET_HEARTBEAT_INTERVAL", "10s")?,
            health_listen,
            shutdown_timeout: duration("MUBELET_SHUTDOWN_TIMEOUT", "5s")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(vars: &[(&str, &str)]) -> Result<Config, String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load(&move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
    }

    #[test]
    fn defaults_are_the_original_ones() {
        let c = load(&[("MUBELET_NODE_NAME", "n1")]).unwrap();
        assert_eq!(c.runtime, "containerd");
        assert_eq!(c.version, "0.1.0");
        assert_eq!(c.capacity, 10);
        assert_eq!(c.api_servers.to_string(), "http://127.0.0.1:8080/");
        assert_eq!(c.heartbeat_interval, Duration::from_secs(10));
        assert_eq!(c.health_listen, "0.0.0.0:10250".parse().unwrap());
        assert_eq!(c.shutdown_timeout, Duration::from_secs(5));
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (var, value) in [
            ("MUBELET_CAPACITY", "0"),
            ("MUBELET_CAPACITY", "ten"),
            ("MUBE_API_SERVER", "localhost:8080"),
            ("MUBELET_HEARTBEAT_INTERVAL", "often"),
            ("MUBELET_HEALTH_LISTEN", "10250"),
            ("MUBELET_SHUTDOWN_TIMEOUT", "0"),
            ("MUBELET_NODE_NAME", "Bad_Name"),
            ("MUBELET_CONTAINER_RUNTIME_ENDPOINT", "tcp://localhost:1"),
            ("MUBELET_NODE_IP", "here"),
            ("MUBELET_RESTART_BACKOFF", "0s"),
        ] {
            let e = load(&[(var, value), ("MUBELET_NODE_NAME", "n1")]).unwrap_err();
            assert!(e.starts_with(var), "{var}={value}: {e}");
        }
    }
}
