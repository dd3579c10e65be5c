//! Reading the API server URL from a kubeconfig (`--kubeconfig`), such as the
//! one mube-apiserver writes under its data directory.

use serde_yaml::Value;

/// The server of the current context's cluster.
pub fn server(path: &str) -> Result<String, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("cannot read kubeconfig {path}: {e}"))?;
    let doc: Value = serde_yaml::from_str(&text).map_err(|e| format!("kubeconfig {path}: {e}"))?;
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
