//! The accept loop: HTTP/1.1 connections, kept alive, served by the router.
//!
//! Written out (rather than `axum::serve`) for what axum's loop does not
//! offer: a connection that does not finish its request headers within
//! `header_timeout` is closed, so idle or hostile clients cannot hold
//! connections open for nothing; with TLS, the handshake has the same
//! time limit, and a failed handshake (garbage, an unknown CA on the
//! client's side) just closes the connection. On shutdown it stops
//! accepting and lets open connections finish (watches end on the same
//! signal).

use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// Closes the connection a request came on, whatever it is doing: how a
/// watch whose client stopped reading is let go (hyper, blocked writing
/// to a full socket, would otherwise hold the connection and its buffers
/// for as long as the client stays). In each request's extensions.
#[derive(Clone, Default)]
pub struct Hangup(CancellationToken);

impl Hangup {
    pub fn now(&self) {
        self.0.cancel();
    }
}

/// What hyper buffers per connection (its minimum is 8 KiB).
const WRITE_BUFFER_BYTES: usize = 32 * 1024;

pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<TlsAcceptor>,
    header_timeout: Duration,
    shutdown: CancellationToken,
) {
    let graceful = GracefulShutdown::new();
    // HTTP/1.1 only, through the builder that can shut an upgradeable
    // connection down gracefully.
    let mut builder = auto::Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        // hyper buffers a response's chunks until the socket takes them,
        // by default up to ~400 KiB per connection: for a watch whose
        // client stopped reading that is memory held for nothing (5,000
        // such watches held 2 GiB). A large chunk (a list's) still goes
        // out whole when the buffer is empty.
        .max_buf_size(WRITE_BUFFER_BYTES)
        .keep_alive(true);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.cancelled() => break,
        };
        let (tcp, remote) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: wait a moment rather
                // than spin, as axum's loop does.
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Small JSON responses on kept-alive connections: don't let Nagle
        // hold them.
        let _ = tcp.set_nodelay(true);
        // The client's address, for the audit log (`ConnectInfo`).
        let hangup = Hangup::default();
        let service = TowerToHyperService::new(
            app.clone()
                .layer(axum::Extension(axum::extract::ConnectInfo(remote)))
                .layer(axum::Extension(hangup.clone())),
        );
        match &tls {
            None => {
                // With upgrades: the streams of exec, attach and port-forward.
                let builder = builder.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let connection =
                        builder.serve_connection_with_upgrades(TokioIo::new(tcp), service);
                    // A client that hangs up or times out is not the server's error.
                    tokio::select! {
                        _ = watcher.watch(connection) => {}
                        _ = hangup.0.cancelled() => {}
                    }
                });
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let app = app.clone();
                let builder = builder.clone();
                let watcher = graceful.watcher();
                let shutdown = shutdown.clone();
                tokio::spawn(async move {
                    // A handshake in progress does not hold up shutdown.
                    let handshake = tokio::time::timeout(header_timeout, acceptor.accept(tcp));
                    let stream = tokio::select! {
                        done = handshake => match done {
                            Ok(Ok(stream)) => stream,
                            Ok(Err(e)) => {
                                tracing::debug!(error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => return,
                        },
                        _ = shutdown.cancelled() => return,
                    };
                    // A verified client certificate names the connection's user.
                    let user = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .and_then(|cert| crate::pki::certificate_user(cert))
                        .map(|(username, groups)| {
                            super::authn::CertificateUser(crate::auth::UserInfo::authenticated(
                                username, groups,
                            ))
                        });
                    let service = match user {
                        Some(user) => TowerToHyperService::new(
                            app.clone()
                                .layer(axum::Extension(axum::extract::ConnectInfo(remote)))
                                .layer(axum::Extension(hangup.clone()))
                                .layer(axum::Extension(user)),
                        ),
                        None => service,
                    };
                    let connection =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = watcher.watch(connection) => {}
                        _ = hangup.0.cancelled() => {}
                    }
                });
            }
        }
    }
    drop(listener);
    graceful.shutdown().await;
}
