//! Reading where and how to reach the API server from a kubeconfig
//! (`--kubeconfig`), such as the one mube-apiserver writes under its data
//! directory: the current context's server, the CA it trusts, and the
//! user's client certificate or token. (kube-rs reads kubeconfigs too, but only
//! these few fields are needed, and mubectl's client is plain reqwest.)

use serde_yaml::Value;

/// How to reach the server.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Target {
    pub server: String,
    /// The CA to trust, PEM (`certificate-authority-data` or `-authority`).
    pub ca_pem: Option<Vec<u8>>,
    /// The client certificate and key, PEM, one after the other.
    pub identity_pem: Option<Vec<u8>>,
    /// A bearer token (`token`, or the contents of `tokenFile`).
    pub token: Option<String>,
}

/// The `{inner}` of the entry of `list` named `name` (e.g. the `cluster`
/// of the cluster a context names), or null.
fn current(doc: &Value, list: &str, name: Option<&Value>, inner: &str) -> Value {
    let Some(name) = name.and_then(Value::as_str) else {
        return Value::Null;
    };
    doc.get(list)
        .and_then(Value::as_sequence)
        .and_then(|entries| {
            entries
                .iter()
                .find(|e| e.get("name").and_then(Value::as_str) == Some(name))
        })
        .and_then(|e| e.get(inner).cloned())
        .unwrap_or(Value::Null)
}

/// `{field}-data` (base64) or `{field}` (a file path) of a kubeconfig entry.
fn data_or_file(entry: &Value, field: &str, path: &str) -> Result<Option<Vec<u8>>, String> {
    use base64::Engine;
    if let Some(data) = entry.get(format!("{field}-data")).and_then(Value::as_str) {
        return base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .map(Some)
            .map_err(|e| format!("kubeconfig {path}: {field}-data is not base64: {e}"));
    }
    match entry.get(field).and_then(Value::as_str) {
        Some(file) => std::fs::read(file)
            .map(Some)
            .map_err(|e| format!("kubeconfig {path}: cannot read {field} {file}: {e}")),
        None => Ok(None),
    }
}

/// The current context's server, CA and client certificate.
pub fn load(path: &str) -> Result<Target, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("cannot read kubeconfig {path}: {e}"))?;
    let doc: Value = serde_yaml::from_str(&text).map_err(|e| format!("kubeconfig {path}: {e}"))?;
    let server = server_in(&doc, path)?;
    let context = current(&doc, "contexts", doc.get("current-context"), "context");
    let cluster = current(&doc, "clusters", context.get("cluster"), "cluster");
    let user = current(&doc, "users", context.get("user"), "user");
    let ca_pem = data_or_file(&cluster, "certificate-authority", path)?;
    let identity_pem = match (
        data_or_file(&user, "client-certificate", path)?,
        data_or_file(&user, "client-key", path)?,
    ) {
        (Some(mut cert), Some(key)) => {
            cert.push(b'\n');
            cert.extend_from_slice(&key);
            Some(cert)
        }
        _ => None,
    };
    let token = match (
        user.get("token").and_then(Value::as_str),
        user.get("tokenFile").and_then(Value::as_str),
    ) {
        (Some(token), _) => Some(token.trim().to_string()),
        (None, Some(file)) => Some(
            std::fs::read_to_string(file)
                .map_err(|e| format!("kubeconfig {path}: cannot read tokenFile {file}: {e}"))?
                .trim()
                .to_string(),
        ),
        (None, None) => None,
    };
    Ok(Target {
        server,
        ca_pem,
        identity_pem,
        token,
    })
}

/// The server of the current context's cluster.
#[cfg(test)]
pub fn server(path: &str) -> Result<String, String> {
    load(path).map(|t| t.server)
}

fn server_in(doc: &Value, path: &str) -> Result<String, String> {
    let named = |list: &str, name: &str| -> Option<Value> {
        doc.get(list)?
            .as_sequence()?
            .iter()
            .find(|e| e.get("name").and_then(Value::as_str) == Some(name))
            .cloned()
    };
    let context_name = doc
        .get("current-context")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("kubeconfig {path}: no current-context"))?;
    let cluster_name = named("contexts", context_name)
        .and_then(|c| {
            c.get("context")?
                .get("cluster")?
                .as_str()
                .map(str::to_string)
        })
        .ok_or_else(|| {
            format!("kubeconfig {path}: context {context_name:?} not found or has no cluster")
        })?;
    named("clusters", &cluster_name)
        .and_then(|c| {
            c.get("cluster")?
                .get("server")?
                .as_str()
                .map(str::to_string)
        })
        .ok_or_else(|| {
            format!("kubeconfig {path}: cluster {cluster_name:?} not found or has no server")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_context_server() {
        let dir = std::env::temp_dir().join(format!("mubectl-kc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config");
        std::fs::write(
            &path,
            "apiVersion: v1\nkind: Config\nclusters:\n- name: a\n  cluster: {server: 'http://a:1'}\n- name: b\n  cluster: {server: 'http://b:2'}\ncontexts:\n- name: ctx\n  context: {cluster: b, user: u}\ncurrent-context: ctx\n",
        )
        .unwrap();
        assert_eq!(server(path.to_str().unwrap()).unwrap(), "http://b:2");
        std::fs::write(&path, "current-context: nope\n").unwrap();
        assert!(server(path.to_str().unwrap()).is_err());
        std::fs::remove_dir_all(dir).ok();
    }
}
