//! The admin kubeconfig the API server writes at start, so that
//! `KUBECONFIG=<dataDir>/kubeconfig kubectl get nodes` works as is.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// File name under the data directory.
pub const FILE: &str = "kubeconfig";

/// The URL clients on this machine use: a wildcard listen address is
/// reached through loopback.
pub fn server_url(bound: SocketAddr) -> String {
    let ip = if bound.ip().is_unspecified() {
        if bound.is_ipv6() {
            "[::1]".to_string()
        } else {
            "127.0.0.1".to_string()
        }
    } else if bound.is_ipv6() {
        format!("[{}]", bound.ip())
    } else {
        bound.ip().to_string()
    };
    format!("http://{ip}:{}", bound.port())
}

pub fn render(server: &str) -> String {
    let template = r#"# Written by mube-apiserver at start: an admin kubeconfig for this server.
apiVersion: v1
kind: Config
clusters:
- name: mube
  cluster:
    server: SERVER
contexts:
- name: mube
  context:
    cluster: mube
    user: mube-admin
current-context: mube
users:
- name: mube-admin
  user: {}
"#;
    template.replace("SERVER", server)
}

/// Writes `<data_dir>/kubeconfig` atomically (a reader never sees half a file).
pub fn write(data_dir: &Path, bound: SocketAddr) -> std::io::Result<PathBuf> {
    let path = data_dir.join(FILE);
    let tmp = data_dir.join(format!("{FILE}.tmp"));
    std::fs::write(&tmp, render(&server_url(bound)))?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_for_wildcards() {
        assert_eq!(
            server_url("0.0.0.0:8080".parse().unwrap()),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            server_url("[::]:8080".parse().unwrap()),
            "http://[::1]:8080"
        );
        assert_eq!(
            server_url("10.0.0.5:80".parse().unwrap()),
            "http://10.0.0.5:80"
        );
        let yaml: serde_yaml::Value = serde_yaml::from_str(&render("http://127.0.0.1:1")).unwrap();
        assert_eq!(
            yaml["clusters"][0]["cluster"]["server"],
            "http://127.0.0.1:1"
        );
        assert_eq!(yaml["current-context"], "mube");
    }
}
