//! The accept loop: HTTP/1.1 connections, kept alive, served by the router.
//!
//! Written out (rather than `axum::serve`) for what axum's loop does not
//! offer: a connection that does not finish its request headers within
//! `header_timeout` is closed, so idle or hostile clients cannot hold
//! connections open for nothing. On shutdown it stops accepting and lets
//! open connections finish (watches end on the same signal).

use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub async fn serve(
    listener: TcpListener,
    app: Router,
    header_timeout: Duration,
    shutdown: CancellationToken,
) {
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.cancelled() => break,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
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
        let service = TowerToHyperService::new(app.clone());
        // No upgrades yet: exec and port-forward will need them.
        let connection = builder.serve_connection(TokioIo::new(tcp), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            // A client that hangs up or times out is not the server's error.
            let _ = connection.await;
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
