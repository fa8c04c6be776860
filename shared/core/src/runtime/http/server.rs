//! The connection loop of every HTTP server: plain HTTP/1.1 or HTTPS, with a deadline for each
//! request's headers (and each TLS handshake), and on every request the [`Peer`] it came from,
//! which the guard names callers by.
//!
//! axum's own `serve` has neither TLS nor a header timeout, so connections are served here with
//! hyper directly; the routes are the same axum [`Router`].

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tower::ServiceExt;

use super::guard::{HttpGuard, Peer, Refusal, Refusals};
use super::tls;
use crate::shutdown::Shutdown;

/// Binds `addr:port` and serves `router` until `shutdown`, as `guard` configures the
/// connections (TLS, header timeout). Returns the bound address (useful with port 0) and the
/// server's task, which ends once every connection has finished its last request.
pub async fn serve(
    addr: &str,
    port: u16,
    router: Router,
    guard: &HttpGuard,
    mut shutdown: Shutdown,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind((addr, port)).await?;
    let bound = listener.local_addr()?;
    let settings = Connections {
        router,
        tls: guard.tls().map(tokio_rustls::TlsAcceptor::from),
        header_timeout: guard.header_timeout(),
        refused: guard.refusals(),
    };
    let scheme = if settings.tls.is_some() {
        "https"
    } else {
        "http"
    };
    tracing::info!(%bound, scheme, "HTTP server listening");
    let task = tokio::spawn(async move {
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        connections.spawn(settings.clone().serve(stream, peer, shutdown.clone()));
                    }
                    Err(err) => {
                        // Out of file descriptors, most likely: give connections time to close.
                        tracing::warn!(error = %err, "cannot accept an HTTP connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                _ = shutdown.wait() => break,
            }
            while connections.try_join_next().is_some() {}
        }
        drop(listener);
        while connections.join_next().await.is_some() {}
    });
    Ok((bound, task))
}

/// What every connection of one server shares.
#[derive(Clone)]
struct Connections {
    router: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    header_timeout: Duration,
    refused: Refusals,
}

impl Connections {
    async fn serve(self, stream: TcpStream, addr: SocketAddr, shutdown: Shutdown) {
        // Responses are small and written whole: send them at once.
        let _ = stream.set_nodelay(true);
        let Some(acceptor) = self.tls.clone() else {
            let peer = Peer {
                addr,
                certificate: None,
            };
            return self.http(stream, peer, shutdown).await;
        };
        match tokio::time::timeout(self.header_timeout, acceptor.accept(stream)).await {
            Ok(Ok(stream)) => {
                let peer = Peer {
                    addr,
                    certificate: tls::client_caller(stream.get_ref().1),
                };
                self.http(stream, peer, shutdown).await;
            }
            Ok(Err(err)) => {
                tracing::debug!(peer = %addr, error = %err, "TLS handshake refused");
                self.refused.count(Refusal::TlsHandshake);
            }
            Err(_) => {
                tracing::debug!(peer = %addr, "TLS handshake timed out");
                self.refused.count(Refusal::TlsHandshake);
            }
        }
    }

    async fn http<I>(self, io: I, peer: Peer, mut shutdown: Shutdown)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        // A header timeout is a slow client's when the client began a request and did not finish
        // its header: not after a request (a kept-alive connection falling idle), and not on a
        // connection that never sent a byte (one a client's pool opened and did not need).
        let served = Arc::new(AtomicBool::new(false));
        let heard = Arc::new(AtomicBool::new(false));
        let io = Heard {
            io,
            heard: heard.clone(),
        };
        let addr = peer.addr;
        let service = {
            let served = served.clone();
            self.router
                .map_request(move |mut request: axum::http::Request<Incoming>| {
                    served.store(true, Ordering::Relaxed);
                    request.extensions_mut().insert(ConnectInfo(peer.addr));
                    request.extensions_mut().insert(peer.clone());
                    request
                })
        };
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_timeout);
        let connection =
            builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(service));
        tokio::pin!(connection);
        let outcome = tokio::select! {
            outcome = connection.as_mut() => outcome,
            _ = shutdown.wait() => {
                // Finish the request in progress, then close.
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        };
        if let Err(err) = outcome {
            let slow = heard.load(Ordering::Relaxed) && !served.load(Ordering::Relaxed);
            if err.is_timeout() && slow {
                tracing::debug!(peer = %addr, "no request header in time; connection closed");
                self.refused.count(Refusal::HeaderTimeout);
            } else if !err.is_timeout() {
                tracing::debug!(peer = %addr, error = %err, "HTTP connection ended with an error");
            }
        }
    }
}

/// A connection that notes whether the client has sent anything.
struct Heard<I> {
    io: I,
    heard: Arc<AtomicBool>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Heard<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.heard.store(true, Ordering::Relaxed);
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Heard<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
