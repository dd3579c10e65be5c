//! Wires the store, the registry, the HTTP server and the controllers
//! together, and shuts them down in order.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::{Config, Storage};
use crate::controllers::client::LocalClient;
use crate::controllers::node_lifecycle::NodeLifecycle;
use crate::http::{router, AppState};
use crate::kubeconfig;
use crate::nodes;
use crate::registry::Registry;
use crate::store::{LogStore, LogStoreOptions, Store};

/// Runs the API server until SIGINT/SIGTERM, then stops accepting, ends
/// watches, lets in-flight requests finish (within the shutdown timeout),
/// and flushes the store.
pub async fn run(config: Config) -> Result<(), String> {
    let store = open_store(&config).await?;
    // On etcd, other API servers may share the store: per-server state
    // gets its cluster answer (README: "Running several API servers").
    let shared = config.storage.shared();
    let registry = Arc::new(
        Registry::standard(store.clone())
            .with_pod_cidrs(config.cluster_cidr, shared)
            .with_service_ranges(config.service_cidr, config.node_ports)
            .with_watch_progress(
                config
                    .watch_bookmark_interval
                    .min(std::time::Duration::from_secs(1)),
            ),
    );
    registry
        .start_pod_cidrs()
        .await
        .map_err(|e| format!("reading the nodes' pod CIDRs: {e}"))?;
    registry
        .start_service_ranges()
        .await
        .map_err(|e| format!("reading the Services' cluster IPs: {e}"))?;
    crate::registry::ensure_system_namespaces(&registry)
        .await
        .map_err(|e| format!("creating the system namespaces: {e}"))?;
    // On a store other API servers share, this config only adds nodes.
    nodes::register_from_config(&registry, &config.nodes, !shared)
        .await
        .map_err(|e| format!("registering the nodes from the config: {e}"))?;

    let listener = tokio::net::TcpListener::bind(config.listen_address)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen_address))?;
    let bound = listener
        .local_addr()
        .map_err(|e| format!("cannot read the listen address: {e}"))?;
    let pki = match &config.tls {
        Some(tls) => {
            let names = crate::pki::serving_names(bound.ip(), &tls.sans);
            Some(crate::pki::load(
                &config.data_dir,
                tls.files.as_ref(),
                &names,
            )?)
        }
        None => {
            if !bound.ip().is_loopback() {
                tracing::warn!(
                    address = %bound,
                    "serving plain HTTP beyond loopback (tls: {{enabled: false}}): anyone on the network can read and change everything"
                );
            }
            None
        }
    };
    let credentials = pki.as_ref().map(|p| kubeconfig::Credentials {
        ca_pem: &p.ca_pem,
        admin: p.admin.as_ref().map(|(c, k)| (c.as_str(), k.as_str())),
    });
    let kubeconfig =
        kubeconfig::write(&config.data_dir, bound, credentials.as_ref()).map_err(|e| {
            format!(
                "cannot write the kubeconfig under {}: {e}",
                config.data_dir.display()
            )
        })?;
    let audit = match &config.audit {
        Some(a) => Some(crate::audit::AuditLog::open(&crate::audit::AuditConfig {
            path: a
                .path
                .clone()
                .unwrap_or_else(|| config.data_dir.join("audit.log")),
            max_bytes: a.max_bytes,
        })?),
        None => None,
    };
    crate::kubernetes_service::ensure(
        &registry,
        config.service_cidr.first(),
        crate::kubernetes_service::advertised(config.advertise_address, bound),
        bound.port(),
    )
    .await
    .map_err(|e| format!("creating the kubernetes Service: {e}"))?;
    let created = crate::auth::bootstrap::ensure(&registry)
        .await
        .map_err(|e| format!("creating the default roles: {e}"))?;
    if created > 0 {
        tracing::info!(created, "created the default roles and bindings");
    }
    let authorizer = Arc::new(crate::auth::Authorizer::new(
        config.authorization.clone(),
        registry.clone(),
    ));
    let shutdown = CancellationToken::new();
    let ready = Arc::new(AtomicBool::new(false));
    let nodes = Arc::new(crate::http::logs::NodeClient::new()?);
    let state = AppState {
        nodes: nodes.clone(),
        registry: registry.clone(),
        shutdown: shutdown.clone(),
        ready: ready.clone(),
        bookmark_interval: config.watch_bookmark_interval,
        watch_stuck_timeout: config.watch_stuck_timeout,
        lease_duration: config.notready_timeout,
        read_wait: config.resource_version_wait,
        openapi: Arc::new(crate::http::openapi::Cache::new(&registry)),
        limits: Arc::new(crate::http::limits::Limits::new(
            config.max_requests_in_flight,
            config.max_watches,
            config.request_timeout,
        )),
        audit: audit.clone(),
        authn: Arc::new(crate::http::authn::Authenticator::new(
            config.token_file.as_deref(),
            pki.as_ref().and_then(|p| p.admin_token.as_deref()),
            nodes.clone(),
            config.anonymous,
            registry.clone(),
        )?),
        authz: authorizer.clone(),
    };

    // Custom kinds are served by every server (no election), from the
    // first request on, and before the controllers start: the namespace
    // controller must see every kind a namespace may hold.
    let mut crds = crate::controllers::crd::CrdController::new(registry.clone());
    let crds_from = crds
        .start()
        .await
        .map_err(|e| format!("serving the CustomResourceDefinitions: {e}"))?;
    let crd_task = tokio::spawn(crds.run(crds_from, shutdown.child_token()));

    // The controllers run once across API servers on one store (etcd):
    // only the elected server's run.
    let signer = pki.as_ref().and_then(|p| p.signer.clone());
    let controllers = {
        let registry = registry.clone();
        let authorizer = authorizer.clone();
        let (timeout, certificate_ttl) = (config.notready_timeout, config.node_certificate_ttl);
        move |stop: CancellationToken| {
            let client = Arc::new(LocalClient::new(registry.clone()));
            let lifecycle = NodeLifecycle::new(client.clone(), timeout);
            let namespaces =
                crate::controllers::namespace::NamespaceController::new(client.clone());
            let csr = signer.clone().map(|signer| {
                crate::controllers::csr_signer::CsrSigner::new(
                    client.clone(),
                    authorizer.clone(),
                    signer,
                    certificate_ttl,
                )
            });
            async move {
                // A set that aborts its tasks when dropped: when leadership
                // is lost, the election drops this future, and nothing of
                // these controllers runs on while another server leads.
                let mut running = tokio::task::JoinSet::new();
                running.spawn(lifecycle.run(stop.child_token()));
                running.spawn(namespaces.run(stop.child_token()));
                if let Some(csr) = csr {
                    running.spawn(csr.run(stop.child_token()));
                }
                while running.join_next().await.is_some() {}
            }
        }
    };
    let mut tasks = vec![
        tokio::spawn(crate::controllers::election::run(
            registry.clone(),
            shared,
            config.leader_election,
            shutdown.child_token(),
            controllers,
        )),
        crd_task,
    ];
    let (acceptor, renewal) = match pki {
        Some(p) => (
            Some(tokio_rustls::TlsAcceptor::from(p.server)),
            Some(p.renewal),
        ),
        None => (None, None),
    };
    let server = tokio::spawn(crate::http::serve::serve(
        listener,
        router(state),
        acceptor,
        config.request_header_timeout,
        shutdown.clone(),
    ));
    ready.store(true, Ordering::Release);
    tracing::info!(
        address = %bound,
        kubeconfig = %kubeconfig.display(),
        data_dir = %config.data_dir.display(),
        nodes = config.nodes.len(),
        notready_timeout = ?config.notready_timeout,
        "mube-apiserver ready"
    );

    if let Some(renewal) = renewal {
        tasks.push(tokio::spawn(renew_serving_certificate(
            renewal,
            shutdown.child_token(),
        )));
    }
    tasks.insert(0, server);
    mube_process::stop_on_signal(&shutdown, config.shutdown_timeout, tasks).await;
    if let Some(audit) = &audit {
        audit.close();
    }
    store.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// Every hour, renews the serving certificate if it is due (or reads the
/// user's files again); a failure is logged and tried again next hour.
async fn renew_serving_certificate(renewal: crate::pki::Renewal, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(std::time::Duration::from_secs(3600)) => {}
        }
        match tokio::task::block_in_place(|| renewal.check()) {
            Ok(true) => tracing::info!("serving a renewed certificate"),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot renew the serving certificate; trying again in an hour")
            }
        }
    }
}

/// The configured backend.
async fn open_store(config: &Config) -> Result<Arc<dyn Store>, String> {
    let options = LogStoreOptions {
        history_retention: config.history_retention,
        history_max_age: config.history_max_age,
        watch_buffer: config.watch_buffer,
        repair: config.repair_log,
        ..LogStoreOptions::with_segment_bytes(config.log_segment_bytes)
    };
    match &config.storage {
        Storage::Log => {
            let store = LogStore::open(&config.data_dir, options).map_err(|e| e.to_string())?;
            Ok(Arc::new(store))
        }
        Storage::Sled => {
            let store =
                LogStore::open_sled(&config.data_dir, options).map_err(|e| e.to_string())?;
            Ok(Arc::new(store))
        }
        Storage::Etcd(etcd) => {
            // Objects live in etcd; dataDir still holds this server's
            // certificates, kubeconfig and audit log.
            std::fs::create_dir_all(&config.data_dir).map_err(|e| {
                format!("dataDir: cannot create {}: {e}", config.data_dir.display())
            })?;
            open_etcd(config, etcd).await
        }
    }
}

#[cfg(feature = "etcd")]
async fn open_etcd(
    config: &Config,
    etcd: &crate::config::EtcdStorage,
) -> Result<Arc<dyn Store>, String> {
    let read = |field: &str,
                path: &Option<std::path::PathBuf>|
     -> Result<Option<Vec<u8>>, String> {
        path.as_ref()
            .map(|p| {
                std::fs::read(p)
                    .map_err(|e| format!("storage.etcd.{field}: cannot read {}: {e}", p.display()))
            })
            .transpose()
    };
    let options = crate::store::EtcdStoreOptions {
        endpoints: etcd.endpoints.clone(),
        prefix: etcd.prefix.clone(),
        history_per_resource: config.history_retention.min(usize::MAX as u64) as usize,
        watch_buffer: config.watch_buffer,
        compaction_interval: etcd.compaction_interval,
        ca: read("caFile", &etcd.ca_file)?,
        identity: match (
            read("certFile", &etcd.cert_file)?,
            read("keyFile", &etcd.key_file)?,
        ) {
            (Some(cert), Some(key)) => Some((cert, key)),
            _ => None,
        },
    };
    // etcd may be starting beside this server: as kube-apiserver, wait
    // for it a while before giving up.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut said = false;
    loop {
        match crate::store::EtcdStore::connect(options.clone()).await {
            Ok(store) => return Ok(Arc::new(store)),
            Err(e) if tokio::time::Instant::now() < deadline => {
                if !said {
                    tracing::warn!(error = %e, endpoints = %etcd.endpoints.join(", "), "waiting for etcd");
                    said = true;
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            Err(e) => {
                return Err(format!(
                    "storage.etcd: {e} (endpoints {})",
                    etcd.endpoints.join(", ")
                ))
            }
        }
    }
}

#[cfg(not(feature = "etcd"))]
async fn open_etcd(
    _config: &Config,
    _etcd: &crate::config::EtcdStorage,
) -> Result<Arc<dyn Store>, String> {
    Err(
        "storage.backend: etcd: this mube-apiserver was built without etcd support; \
         build it with `cargo build --release -p mube-apiserver --features etcd` \
         (which needs protoc: apt-get install protobuf-compiler)"
            .into(),
    )
}
