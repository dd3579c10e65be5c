//! What every mube component that is an API client shares (the scheduler,
//! the controller manager): a `kube::Client` from a kubeconfig, and leader
//! election through a `coordination.k8s.io/v1` Lease.

pub mod leader;

#[cfg(feature = "kube")]
use std::path::PathBuf;

#[cfg(feature = "kube")]
use kube::Client;

/// A client from `--kubeconfig PATH`, or as kubectl finds one
/// (`$KUBECONFIG`, then `~/.kube/config`, then in-cluster).
#[cfg(feature = "kube")]
pub async fn connect(kubeconfig: Option<PathBuf>) -> Result<Client, String> {
    let config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(&path)
                .map_err(|e| format!("--kubeconfig {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &Default::default())
                .await
                .map_err(|e| format!("--kubeconfig {}: {e}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| format!("no kubeconfig: {e}"))?,
    };
    Client::try_from(config).map_err(|e| format!("cannot build the API client: {e}"))
}
