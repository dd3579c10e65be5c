//! The agent: owns its components and stops them in order: the heartbeat,
//! the health endpoint, the node's status, and the pods it runs through the
//! container runtime.

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
    let runtime = crate::cri::Runtime::new(&config.runtime_endpoint, config.runtime_timeout)
        .map_err(|e| format!("MUBELET_CONTAINER_RUNTIME_ENDPOINT: {e}"))?;
    // Asked once before the first heartbeat, so that the node reports the
    // runtime's own name from the start instead of changing it a moment
    // later (a Node write, and a watch event, on every start).
    let runtime_name = crate::node_status::RuntimeName::default();
    if !config.runtime_given {
        if let Ok(Ok(v)) =
            tokio::time::timeout(std::time::Duration::from_secs(2), runtime.version()).await
        {
            *runtime_name.lock().unwrap_or_else(|p| p.into_inner()) =
                Some(crate::node_status::reported_name(&v));
        }
    }
    let heartbeater = Heartbeater::new(
        &config,
        client.clone(),
        status.clone(),
        (!config.runtime_given).then(|| runtime_name.clone()),
    )?;
    let host_ip = config
        .node_ip
        .clone()
        .or_else(|| crate::node_status::detect_ip(config.api_servers.current()));
    let listener = tokio::net::TcpListener::bind(config.health_listen)
        .await
        .map_err(|e| {
            format!(
                "MUBELET_HEALTH_LISTEN: cannot listen on {}: {e}",
                config.health_listen
            )
        })?;

    let shutdown = CancellationToken::new();
    let logs = crate::logs::LogState::new(
        config.clone(),
        runtime.clone(),
        credentials::http_client(&config, None, timeout)?,
    );
    let health = axum::serve(listener, health::router(config.clone(), status, logs))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned());
    let health = tokio::spawn(async move {
        if let Err(e) = health.await {
            tracing::error!(error = %e, "health server failed");
        }
    });
    let heartbeat = tokio::spawn(heartbeater.run(shutdown.clone()));
    let node_status = tokio::spawn(crate::node_status::run(
        config.clone(),
        runtime.clone(),
        runtime_name,
        host_ip.clone(),
        client.clone(),
        shutdown.clone(),
    ));
    let proxy = (config.proxy_mode == crate::proxy::Mode::Nftables).then(|| {
        tokio::spawn(crate::proxy::run(
            config.api_servers.clone(),
            client.clone(),
            config.node_name.clone(),
            shutdown.clone(),
        ))
    });
    let pods = tokio::spawn(crate::pods::run(
        Arc::new(crate::pods::Shared {
            runtime,
            node: config.node_name.clone(),
            api_servers: config.api_servers.clone(),
            client,
            log_root: config.pod_log_dir.clone(),
            backoff: crate::pods::backoff::Policy {
                base: config.restart_backoff,
                max: config.restart_backoff * 30,
            },
            host_ip,
            resync: config.sync_interval,
            api_writes: tokio::sync::Semaphore::new(crate::pods::API_WRITES),
        }),
        shutdown.clone(),
    ));
    let mut tasks = vec![heartbeat, health, node_status, pods];
    tasks.extend(proxy);
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
        api_server = %config.api_servers,
        interval = ?config.heartbeat_interval,
        health = %config.health_listen,
        "mubelet started"
    );

    mube_process::stop_on_signal(&shutdown, config.shutdown_timeout, tasks).await;
    tracing::info!("stopped");
    Ok(())
}
