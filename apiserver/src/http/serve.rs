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

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// What a request may do to the connection it came on (in each request's
/// extensions): what a watch needs.
#[derive(Clone, Default)]
pub struct ConnectionControl {
    hangup: CancellationToken,
    /// A send buffer size asked for, applied by the socket's next write.
    send_buffer: Arc<AtomicUsize>,
}

impl ConnectionControl {
    /// Closes the connection, whatever it is doing: how a watch whose
    /// client stopped reading is let go (hyper, blocked writing to a full
    /// socket, would otherwise hold the connection and its buffers for as
    /// long as the client stays).
    pub fn hang_up(&self) {
        self.hangup.cancel();
    }

    /// Caps the socket's send buffer. The kernel grows a socket's buffer
    /// to 4 MiB (`tcp_wmem`) while its peer's window is open: a watch
    /// whose client stops reading would take that much of its events, each
    /// encoded and copied, before it is found to be stuck.
    pub fn cap_send_buffer(&self, bytes: usize) {
        self.send_buffer.store(bytes, Ordering::Release);
    }
}

/// A connection's TCP socket, which applies `cap_send_buffer` on its next
/// write: the request asking for it holds no handle to the socket.
struct Socket {
    tcp: tokio::net::TcpStream,
    send_buffer: Arc<AtomicUsize>,
}

impl Socket {
    fn apply(&self) {
        let asked = self.send_buffer.swap(0, Ordering::AcqRel);
        if asked > 0 {
            if let Err(e) = rustix::net::sockopt::set_socket_send_buffer_size(&self.tcp, asked) {
                tracing::debug!(error = %e, "capping a socket's send buffer");
            }
        }
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.apply();
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.apply();
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// What hyper buffers per connection: the largest request head it reads
/// (a long bearer token must fit), and what it queues of a response. A
/// watch's chunks hold its own byte budget until hyper has written them,
/// so a watch is held to that smaller budget within this one.
const CONNECTION_BUFFER_BYTES: usize = 64 * 1024;

/// The router, for one connection: each request gets the connection's
/// facts in its extensions (the client's address, its `ConnectionControl`, the user a
/// client certificate names). Set per request rather than by layering the
/// router per connection, which rebuilt every route's service stack for
/// each connection: ~24 KiB that an open watch held for its lifetime.
fn connection_service(
    app: &Router,
    remote: std::net::SocketAddr,
    control: &ConnectionControl,
    user: Option<super::authn::CertificateUser>,
) -> impl hyper::service::Service<
    hyper::Request<hyper::body::Incoming>,
    Response = axum::response::Response,
    Error = std::convert::Infallible,
    Future = impl std::future::Future<
        Output = Result<axum::response::Response, std::convert::Infallible>,
    > + Send
                 + 'static,
> + Clone
       + Send
       + 'static {
    let app = app.clone();
    let control = control.clone();
    hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
        let extensions = request.extensions_mut();
        extensions.insert(axum::extract::ConnectInfo(remote));
        extensions.insert(control.clone());
        if let Some(user) = &user {
            extensions.insert(user.clone());
        }
        tower::ServiceExt::oneshot(app.clone(), request)
    })
}

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
        // client stopped reading that was memory held for nothing (5,000
        // such watches held 2 GiB). A large chunk (a list's) still goes
        // out whole when the buffer is empty.
        .max_buf_size(CONNECTION_BUFFER_BYTES)
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
        let control = ConnectionControl::default();
        let tcp = Socket {
            tcp,
            send_buffer: control.send_buffer.clone(),
        };
        // The client's address goes with each request, for the audit log
        // (`ConnectInfo`).
        let service = connection_service(&app, remote, &control, None);
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
                        _ = control.hangup.cancelled() => {}
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
                        Some(user) => connection_service(&app, remote, &control, Some(user)),
                        None => service,
                    };
                    let connection =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = watcher.watch(connection) => {}
                        _ = control.hangup.cancelled() => {}
                    }
                });
            }
        }
    }
    drop(listener);
    graceful.shutdown().await;
}
