//! The pod network: a CNI config for the standard plugins (`bridge` with
//! `host-local` addresses from the node's podCIDR, `portmap` for host
//! ports, and `loopback`, which containerd adds itself), written where the
//! runtime reads it. Pods on one node reach each other through the bridge
//! and the host through its gateway address.

use std::path::{Path, PathBuf};

use serde_json::json;

/// The file's name: first in order, so the runtime picks it.
pub const CONF_FILE: &str = "10-mube.conflist";

pub fn cni_config(pod_cidr: &str) -> serde_json::Value {
    json!({
        "cniVersion": "0.4.0",
        "name": "mube",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "mube0",
                "isGateway": true,
                "ipMasq": true,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": pod_cidr}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": true}},
        ],
    })
}

/// Writes the config atomically (the runtime may read it at any moment);
/// returns its path.
///
/// Several mubelets on one machine share one runtime, and so one CNI
/// config: the first one written stays (`Ok(None)` tells the caller), and
/// every node's pods take addresses from that range. Addresses stay unique,
/// since host-local keeps one allocation table per network.
pub fn write_cni_config(dir: &Path, pod_cidr: &str) -> Result<Option<PathBuf>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let path = dir.join(CONF_FILE);
    let text = serde_json::to_string_pretty(&cni_config(pod_cidr)).map_err(|e| e.to_string())?;
    match std::fs::read_to_string(&path) {
        Ok(existing) if existing == text => return Ok(Some(path)),
        Ok(_) => return Ok(None),
        Err(_) => {}
    }
    let tmp = dir.join(format!(".{CONF_FILE}.{}", std::process::id()));
    std::fs::write(&tmp, text).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, &path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Some(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_range_is_the_nodes() {
        let c = cni_config("10.244.3.0/24");
        assert_eq!(
            c["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
            "10.244.3.0/24"
        );
        let dir = std::env::temp_dir().join(format!("mube-cni-{}", std::process::id()));
        let path = write_cni_config(&dir, "10.244.3.0/24").unwrap().unwrap();
        assert!(std::fs::read_to_string(&path)
            .unwrap()
            .contains("10.244.3.0/24"));
        // A second node on the same runtime keeps the first one's config.
        assert_eq!(write_cni_config(&dir, "10.244.4.0/24").unwrap(), None);
        assert!(std::fs::read_to_string(&path)
            .unwrap()
            .contains("10.244.3.0/24"));
        let _ = std::fs::remove_dir_all(dir);
    }
}
