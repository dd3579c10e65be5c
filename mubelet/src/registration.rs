//! A node that joined with a credential registers itself, as the kubelet
//! does: when its Node does not exist, it creates it (the server lets a
//! node create only its own). Nodes listed in the API server's config are
//! registered there, as in the original Mube; an agent without a
//! credential never creates anything.

use serde_json::json;

use crate::config::Config;

pub async fn ensure_node(config: &Config, client: &reqwest::Client) -> Result<(), String> {
    let url = config
        .api_servers
        .join(&format!("api/v1/nodes/{}", config.node_name))?;
    let found = client
        .get(url)
        .send()
        .await
        .map_err(|e| mube_apis::errors::chain(&e))?;
    if found.status() != reqwest::StatusCode::NOT_FOUND {
        return Ok(());
    }
    let collection = config.api_servers.join("api/v1/nodes")?;
    let node = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": config.node_name,
            "labels": {"kubernetes.io/hostname": config.node_name},
        },
        "status": {"daemonEndpoints": {"kubeletEndpoint": {"Port": config.health_listen.port()}}},
    });
    let created = client
        .post(collection)
        .json(&node)
        .send()
        .await
        .map_err(|e| mube_apis::errors::chain(&e))?;
    let code = created.status();
    if code.is_success() || code == reqwest::StatusCode::CONFLICT {
        tracing::info!(node = %config.node_name, "registered this node");
        return Ok(());
    }
    let text = created.text().await.unwrap_or_default();
    Err(format!(
        "cannot register node {:?}: {} {text}",
        config.node_name,
        code.as_u16()
    ))
}
