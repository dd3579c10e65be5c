//! Controllers: API clients that watch resources and write back through the
//! same paths as any other client.

pub mod client;
pub mod crd;
pub mod csr_signer;
pub mod election;
pub mod namespace;
pub mod node_lifecycle;

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::error::ApiError;

/// Runs `pass` (a list, then a watch until it ends) until `shutdown`,
/// listing again half a second after each failure: the loop every
/// list-and-watch controller runs.
pub async fn relist_until<F, Fut>(what: &str, shutdown: &CancellationToken, mut pass: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), ApiError>>,
{
    loop {
        match pass().await {
            Ok(()) => return,
            Err(e) => tracing::warn!(error = %e, "{what}: relisting"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}
