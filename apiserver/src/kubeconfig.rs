//! The admin kubeconfig the API server writes at start, so that
//! `KUBECONFIG=<dataDir>/kubeconfig kubectl get nodes` works as is.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// File name under the data directory.
pub const FILE: &str = "kubeconfig";

/// The URL clients on this machine use: a wildcard listen address is
/// reached through loopback.
pub fn server_url(bound: SocketAddr, tls: bool) -> String {
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
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{ip}:{}", bound.port())
}

/// What a TLS kubeconfig carries besides the URL: the CA to trust, and
/// the admin's client certificate and key (PEM).
pub struct Credentials<'a> {
    pub ca_pem: &'a str,
    pub admin: Option<(&'a str, &'a str)>,
}

fn base64(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// The kubeconfig text.
pub fn render(server: &str, credentials: Option<&Credentials>) -> String {
    let template = r#"# Written by mube-apiserver at start: an admin kubeconfig for this server.
apiVersion: v1
kind: Config
clusters:
- name: mube
  cluster:
    server: {server}
contexts:
- name: mube
  context:
    cluster: mube
    user: mube-admin
current-context: mube
users:
- name: mube-admin
  user:{user}
"#;
    let ca = match credentials {
        Some(c) => format!("\n    certificate-authority-data: {}", base64(c.ca_pem)),
        None => String::new(),
    };
    let user = match credentials.and_then(|c| c.admin) {
        Some((cert, key)) => format!(
            "\n    client-certificate-data: {}\n    client-key-data: {}",
            base64(cert),
            base64(key)
        ),
        None => " {}".to_string(),
    };
    // Braces are not in base64's alphabet: no placeholder can appear in
    // what replaces the other.
    template
        .replace("{user}", &user)
        .replace("{server}", &format!("{server}{ca}"))
}

/// Writes `<data_dir>/kubeconfig` atomically (a reader never sees half a file).
/// Owner-only: with TLS it holds the admin's private key.
pub fn write(
    data_dir: &Path,
    bound: SocketAddr,
    credentials: Option<&Credentials>,
) -> std::io::Result<PathBuf> {
    let path = data_dir.join(FILE);
    let text = render(&server_url(bound, credentials.is_some()), credentials);
    crate::files::write_atomically(&path, text.as_bytes(), 0o600)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_for_wildcards() {
        assert_eq!(
            server_url("0.0.0.0:8080".parse().unwrap(), false),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            server_url("[::]:8080".parse().unwrap(), true),
            "https://[::1]:8080"
        );
        assert_eq!(
            server_url("10.0.0.5:80".parse().unwrap(), false),
            "http://10.0.0.5:80"
        );
        let yaml: serde_yaml::Value =
            serde_yaml::from_str(&render("http://127.0.0.1:1", None)).unwrap();
        assert!(yaml["users"][0]["user"].as_mapping().unwrap().is_empty());
        assert_eq!(
            yaml["clusters"][0]["cluster"]["server"],
            "http://127.0.0.1:1"
        );
        assert_eq!(yaml["current-context"], "mube");
        let yaml: serde_yaml::Value = serde_yaml::from_str(&render(
            "https://127.0.0.1:1",
            Some(&Credentials {
                ca_pem: "PEM",
                admin: Some(("C", "K")),
            }),
        ))
        .unwrap();
        assert_eq!(
            yaml["clusters"][0]["cluster"]["certificate-authority-data"],
            "UEVN"
        );
        assert_eq!(yaml["users"][0]["user"]["client-certificate-data"], "Qw==");
        assert_eq!(yaml["users"][0]["user"]["client-key-data"], "Sw==");
    }
}
