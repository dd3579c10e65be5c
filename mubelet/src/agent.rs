//! The agent: owns its components and stops them in order. Today these are
//! the heartbeat and the health endpoint; running pods through the container
//! runtime will be one more component started here, beside them.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::credentials;
use crate::health;
use crate::heartbeat::{Heartbeater, SharedStatus};

pub async fn run(config: Config) -> Result<(), String> {
    let config = Arc::new(config);
    let status = SharedStatus::default();
    let identity = credentials::initial(&config).await?;
    let timeout = Heartbeater::timeout(&config);
    let (clients, client) = tokio::sync::watch::channel(credentials::http_client(
        &config,
        identity.as_ref(),
        timeout,
    )?);
    if identity.is_some() {
        // Not fatal: the heartbeat says what is wrong, and keeps trying.
        let current = client.borrow().clone();
        if let Err(e) = crate::registration::ensure_node(&config, &current).await {
            tracing::warn!(error = %e, "cannot register this node");
        }
    }
    let heartbeater = Heartbeater::new(&config, client, status.clone())?;
    let listener = tokio::net::TcpListener::bind(config.health_listen)
        .await
        .map_err(|e| {
            format!(
                "MUBELET_HEALTH_LISTEN: cannot listen on {}: {e}",
                config.health_listen
            )
        })?;

    let shutdown = CancellationToken::new();
    let health = axum::serve(listener, health::router(config.clone(), status))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned());
    let health = tokio::spawn(async move {
        if let Err(e) = health.await {
            tracing::error!(error = %e, "health server failed");
        }
    });
    let heartbeat = tokio::spawn(heartbeater.run(shutdown.clone()));
    let mut tasks = vec![heartbeat, health];
    if let Some(identity) = identity {
        tasks.push(tokio::spawn(credentials::renew(
            config.clone(),
            identity,
            timeout,
            clients,
            shutdown.clone(),
        )));
    }
    tracing::info!(
        node = %config.node_name,
        api_server = %config.api_server,
        interval = ?config.heartbeat_interval,
        health = %config.health_listen,
        "mubelet started"
    );

    mube_process::stop_on_signal(&shutdown, config.shutdown_timeout, tasks).await;
    tracing::info!("stopped");
    Ok(())
}
