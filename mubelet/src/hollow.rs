//! `mubelet hollow --nodes N`: N hollow nodes in one process, as kubemark
//! runs hollow kubelets, to load the control plane at scale on one
//! machine. Each is a whole mubelet agent (its own identity, heartbeat,
//! node status and pod workers) on the in-memory runtime
//! (`fake_runtime.rs`), configured from the environment as any mubelet,
//! with these per node: `MUBELET_NODE_NAME` = `{prefix}-{i}`, a state
//! directory under `MUBELET_STATE_DIR`, and an ephemeral health port.

use crate::config::Config;

pub struct Hollow {
    configs: Vec<Config>,
}

const USAGE: &str = "usage: mubelet hollow [--nodes N] [--name-prefix PREFIX]";

/// The nodes' configurations, from the arguments after `hollow` and the
/// environment.
pub fn load(args: &[String]) -> Result<Hollow, String> {
    let mut nodes = 10usize;
    let mut prefix = "hollow-node".to_string();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        let mut value = |name: &str| {
            rest.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value; {USAGE}"))
        };
        match arg.as_str() {
            "--nodes" => {
                nodes = value("--nodes")?
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("--nodes must be a positive number; {USAGE}"))?
            }
            "--name-prefix" => prefix = value("--name-prefix")?,
            other => return Err(format!("unknown argument {other:?}; {USAGE}")),
        }
    }
    let base = std::env::var("MUBELET_STATE_DIR").unwrap_or_else(|_| "/var/lib/mubelet".into());
    let mut configs = Vec::with_capacity(nodes);
    for i in 1..=nodes {
        let name = format!("{prefix}-{i}");
        let dir = format!("{base}/{name}");
        let own = |key: &str| -> Option<String> {
            match key {
                "MUBELET_NODE_NAME" => Some(name.clone()),
                "MUBELET_STATE_DIR" => Some(dir.clone()),
                "MUBELET_POD_LOG_DIR" => Some(format!("{dir}/pods")),
                "MUBELET_CNI_CONF_DIR" => Some(format!("{dir}/cni")),
                "MUBELET_HEALTH_LISTEN" => Some("127.0.0.1:0".into()),
                "MUBELET_CONTAINER_RUNTIME_ENDPOINT" => Some(crate::fake_runtime::ENDPOINT.into()),
                _ => std::env::var(key).ok().filter(|v| !v.trim().is_empty()),
            }
        };
        configs.push(Config::load(&own).map_err(|e| format!("{name}: {e}"))?);
    }
    Ok(Hollow { configs })
}

pub async fn run(hollow: Hollow) -> Result<(), String> {
    tracing::info!(nodes = hollow.configs.len(), "starting hollow nodes");
    let agents: Vec<_> = hollow
        .configs
        .into_iter()
        .map(|c| tokio::spawn(crate::agent::run(c)))
        .collect();
    let mut failed = None;
    for agent in agents {
        match agent.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failed = failed.or(Some(e)),
            Err(e) => failed = failed.or(Some(e.to_string())),
        }
    }
    failed.map_or(Ok(()), Err)
}
