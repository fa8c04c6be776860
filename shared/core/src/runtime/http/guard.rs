//! The guard in front of every HTTP route that serves or takes data, in every function and in
//! `freshet view`: who may call (bearer tokens, client certificates), how often (a token bucket
//! per caller), how many at once, and how large and how slow a request may be. Health probes are
//! never behind it.
//!
//! A request passes these checks in order, and the first it fails answers it:
//!
//! 1. **Who.** A verified client certificate (see [`tls`]), else the
//!    `Authorization: Bearer` token, names the caller. No credential is 401
//!    (`missing_credential`); a token that is not held (wrong, or rotated out) is 401
//!    (`wrong_credential`). A route whose surface asks for no credential names its caller by the
//!    peer's address.
//! 2. **How often.** Each caller has a token bucket (governor's GCRA): the caller's name when its
//!    credential was good, else its peer address, so a flood with a bad token is throttled
//!    too. Empty is 429 with `Retry-After` (`rate_limited`).
//! 3. **How many.** At most `--http-max-in-flight` requests are handled at once; beyond, 503 with
//!    `Retry-After: 1` (`overloaded`), the status of a server that is busy rather than a caller
//!    that is greedy.
//! 4. **How large, how slow.** The body is read whole before the route sees it: more than
//!    `--http-max-body-bytes` is 413 (`body_too_large`; the rest, up to as much again, is read and
//!    dropped first, or the sender would see its connection reset rather than the answer), not
//!    all of it within `--http-body-timeout` is 408 (`body_timeout`). The deadline is for the
//!    whole body, not between reads, so a client trickling a byte at a time cannot hold a slot.
//!    (tower-http's body timeout restarts at every frame, which is why this is not it.)
//!
//! Every refusal is counted on `/metrics` as `freshet_http_refused_total{reason}`, with the
//! reasons of [`Refusal`] (a fixed set). A refusal is logged at debug level with its reason, path
//! and peer, never with the credential it carried.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use governor::clock::Clock;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde_json::json;
use tokio::sync::Semaphore;

use crate::config::HttpArgs;
use crate::metrics::{Metrics, ReasonLabel};
use crate::shutdown::Shutdown;

use super::tls::{self, TlsError};
use super::tokens::{TokenError, TokenFile};

/// Longest a body over the limit is read and dropped for, so its sender sees the 413.
const DRAIN_AT_MOST: Duration = Duration::from_secs(2);

/// How often the rate limiter forgets callers it has not seen for a while.
const FORGET_IDLE_CALLERS_EVERY: Duration = Duration::from_secs(60);

/// Why a request or a connection was refused: the `reason` label of `http_refused`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No credential on a route that asks for one.
    MissingCredential,
    /// A token that is not (or no longer) held.
    WrongCredential,
    /// The caller is over its rate.
    RateLimited,
    /// Too many requests in flight.
    Overloaded,
    BodyTooLarge,
    /// The body did not arrive within the body timeout.
    BodyTimeout,
    /// The client stopped sending before its body was complete.
    BodyIncomplete,
    /// A client began its first request on a connection and did not finish its header within
    /// the header timeout.
    HeaderTimeout,
    /// A TLS handshake failed (a client certificate from another CA, plain HTTP, a timeout).
    TlsHandshake,
}

impl Refusal {
    pub const ALL: [Refusal; 9] = [
        Refusal::MissingCredential,
        Refusal::WrongCredential,
        Refusal::RateLimited,
        Refusal::Overloaded,
        Refusal::BodyTooLarge,
        Refusal::BodyTimeout,
        Refusal::BodyIncomplete,
        Refusal::HeaderTimeout,
        Refusal::TlsHandshake,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::MissingCredential => "missing_credential",
            Refusal::WrongCredential => "wrong_credential",
            Refusal::RateLimited => "rate_limited",
            Refusal::Overloaded => "overloaded",
            Refusal::BodyTooLarge => "body_too_large",
            Refusal::BodyTimeout => "body_timeout",
            Refusal::BodyIncomplete => "body_incomplete",
            Refusal::HeaderTimeout => "header_timeout",
            Refusal::TlsHandshake => "tls_handshake",
        }
    }

    fn status(self) -> StatusCode {
        match self {
            Refusal::MissingCredential | Refusal::WrongCredential => StatusCode::UNAUTHORIZED,
            Refusal::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Refusal::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::BodyTimeout | Refusal::HeaderTimeout => StatusCode::REQUEST_TIMEOUT,
            Refusal::BodyIncomplete | Refusal::TlsHandshake => StatusCode::BAD_REQUEST,
        }
    }

    fn message(self, guard: &Inner) -> String {
        match self {
            Refusal::MissingCredential => {
                "this route needs a credential: send `Authorization: Bearer <token>`".into()
            }
            Refusal::WrongCredential => "the credential is not accepted".into(),
            Refusal::RateLimited => "too many requests from this caller; retry later".into(),
            Refusal::Overloaded => "too many requests in flight; retry later".into(),
            Refusal::BodyTooLarge => format!(
                "the request body is larger than {} bytes",
                guard.max_body_bytes
            ),
            Refusal::BodyTimeout => format!(
                "the request body did not arrive within {}",
                humantime::format_duration(guard.body_timeout)
            ),
            Refusal::BodyIncomplete => "the request body ended early".into(),
            Refusal::HeaderTimeout | Refusal::TlsHandshake => self.as_str().into(),
        }
    }
}

/// The count of refusals by reason, shared by the guard and the server's connection loop.
#[derive(Clone, Debug)]
pub struct Refusals(Family<ReasonLabel, Counter>);

impl Default for Refusals {
    fn default() -> Self {
        let family = Family::<ReasonLabel, Counter>::default();
        for refusal in Refusal::ALL {
            // Every reason from the start, so dashboards show zeros rather than gaps.
            let _ = family.get_or_create(&label(refusal));
        }
        Refusals(family)
    }
}

impl Refusals {
    pub fn count(&self, refusal: Refusal) {
        self.0.get_or_create(&label(refusal)).inc();
    }

    /// How many requests were refused for `refusal` so far.
    pub fn get(&self, refusal: Refusal) -> u64 {
        self.0.get_or_create(&label(refusal)).get()
    }
}

fn label(refusal: Refusal) -> ReasonLabel {
    ReasonLabel {
        reason: refusal.as_str().to_string(),
    }
}

/// Which credentials a route takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// What a function serves or takes: predictions, pushed events, the live view's state.
    Serving,
    /// `/metrics`, for Prometheus: its own tokens, so a scraper's token cannot call the rest.
    Metrics,
}

/// Why the guard's settings were refused.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("HTTP tokens: {0}")]
    Tokens(#[from] TokenError),
    #[error("HTTP TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("{0}")]
    Invalid(&'static str),
}

/// What a surface accepts as a credential; nothing when neither is set (the surface is open).
#[derive(Debug, Default)]
struct Credentials {
    tokens: Option<TokenFile>,
    client_certificates: bool,
}

impl Credentials {
    fn required(&self) -> bool {
        self.tokens.is_some() || self.client_certificates
    }
}

/// What the guard made of a request's credentials.
enum Caller {
    /// Named by a good credential.
    Known(Arc<str>),
    /// The surface asks for no credential.
    Anyone,
    Missing,
    Wrong,
}

/// Who is on the other end of a connection: put on each request by the server
/// ([`serve`](super::serve)).
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    /// The caller named by the connection's verified client certificate.
    pub certificate: Option<Arc<str>>,
}

type Limiter = governor::DefaultKeyedRateLimiter<Arc<str>>;

/// The guard: built once from [`HttpArgs`], shared by every route it protects and by the
/// server's connection loop.
#[derive(Clone)]
pub struct HttpGuard {
    inner: Arc<Inner>,
}

struct Inner {
    serving: Credentials,
    metrics: Credentials,
    tokens_reload: Duration,
    rate: Option<Arc<Limiter>>,
    in_flight: Arc<Semaphore>,
    max_body_bytes: usize,
    body_timeout: Duration,
    header_timeout: Duration,
    tls: Option<Arc<rustls::ServerConfig>>,
    refused: Refusals,
}

impl HttpGuard {
    /// Reads the tokens and certificates `args` name (an unreadable or empty token source is an
    /// error here); `/metrics` takes the tokens of `metrics_tokens`, or is open without it.
    pub fn new(args: &HttpArgs, metrics_tokens: Option<&Path>) -> Result<HttpGuard, GuardError> {
        if args.max_in_flight == 0 {
            return Err(GuardError::Invalid(
                "--http-max-in-flight must be at least 1",
            ));
        }
        if args.header_timeout.is_zero() || args.body_timeout.is_zero() {
            return Err(GuardError::Invalid(
                "--http-header-timeout and --http-body-timeout must be longer than 0",
            ));
        }
        let tls = match (&args.https_cert, &args.https_key) {
            (Some(cert), Some(key)) => {
                Some(tls::server_config(cert, key, args.client_ca.as_deref())?)
            }
            (None, None) if args.client_ca.is_some() => {
                return Err(GuardError::Invalid(
                    "--http-client-ca needs --http-tls-cert and --http-tls-key",
                ));
            }
            (None, None) => None,
            _ => {
                return Err(GuardError::Invalid(
                    "--http-tls-cert and --http-tls-key go together",
                ));
            }
        };
        let rate = std::num::NonZeroU32::new(args.rate).map(|rate| {
            let burst = args
                .burst
                .and_then(std::num::NonZeroU32::new)
                .unwrap_or(rate);
            Arc::new(Limiter::keyed(
                governor::Quota::per_second(rate).allow_burst(burst),
            ))
        });
        Ok(HttpGuard {
            inner: Arc::new(Inner {
                serving: Credentials {
                    tokens: args.tokens.as_deref().map(TokenFile::open).transpose()?,
                    client_certificates: args.client_ca.is_some(),
                },
                metrics: Credentials {
                    tokens: metrics_tokens.map(TokenFile::open).transpose()?,
                    client_certificates: false,
                },
                tokens_reload: args.tokens_reload,
                rate,
                in_flight: Arc::new(Semaphore::new(args.max_in_flight)),
                max_body_bytes: args.max_body_bytes,
                body_timeout: args.body_timeout,
                header_timeout: args.header_timeout,
                tls,
                refused: Refusals::default(),
            }),
        })
    }

    /// Starts re-reading the token sources and forgetting idle callers, until `shutdown`.
    pub fn start(&self, shutdown: &Shutdown) {
        for file in [&self.inner.serving.tokens, &self.inner.metrics.tokens]
            .into_iter()
            .flatten()
        {
            tokio::spawn(
                file.clone()
                    .reload_every(self.inner.tokens_reload, shutdown.clone()),
            );
        }
        if let Some(limiter) = self.inner.rate.clone() {
            let mut shutdown = shutdown.clone();
            tokio::spawn(async move {
                let mut ticks = tokio::time::interval(FORGET_IDLE_CALLERS_EVERY);
                loop {
                    tokio::select! {
                        _ = ticks.tick() => {
                            limiter.retain_recent();
                            limiter.shrink_to_fit();
                        }
                        _ = shutdown.wait() => return,
                    }
                }
            });
        }
    }

    /// Counts refusals as `http_refused{reason}` in `metrics`.
    pub fn register(&self, metrics: &Metrics) {
        metrics.register(
            "http_refused",
            "HTTP requests and connections refused, by reason",
            self.inner.refused.0.clone(),
        );
    }

    /// `router`'s routes behind the guard, taking the credentials of `surface`.
    pub fn protect(&self, surface: Surface, router: Router) -> Router {
        router
            // The guard has read the body within its limit; the routes' own extractors need not
            // apply axum's default limit (2 MB) on top.
            .layer(DefaultBodyLimit::disable())
            .layer(axum::middleware::from_fn_with_state(
                Gate {
                    guard: self.clone(),
                    surface,
                },
                check,
            ))
    }

    /// Whether the serving routes ask for a credential.
    pub fn requires_credentials(&self) -> bool {
        self.inner.serving.required()
    }

    /// Logs a warning when `what` answers anyone who reaches the port.
    pub fn warn_if_open(&self, what: &str) {
        if !self.requires_credentials() {
            tracing::warn!(
                "{what} answer anyone who can reach this port: set FRESHET_HTTP_TOKENS \
                 (--http-tokens) or FRESHET_HTTP_CLIENT_CA (--http-client-ca) to require a \
                 credential"
            );
        }
    }

    /// The server's TLS configuration, when it speaks HTTPS.
    pub fn tls(&self) -> Option<Arc<rustls::ServerConfig>> {
        self.inner.tls.clone()
    }

    pub fn header_timeout(&self) -> Duration {
        self.inner.header_timeout
    }

    pub fn refusals(&self) -> Refusals {
        self.inner.refused.clone()
    }
}

/// The guard as one surface's middleware state.
#[derive(Clone)]
struct Gate {
    guard: HttpGuard,
    surface: Surface,
}

async fn check(State(gate): State<Gate>, request: Request, next: Next) -> Response {
    let guard = &gate.guard.inner;
    let credentials = match gate.surface {
        Surface::Serving => &guard.serving,
        Surface::Metrics => &guard.metrics,
    };
    let peer = request.extensions().get::<Peer>();
    let peer_key = || -> Arc<str> {
        peer.map_or_else(
            || "ip:unknown".into(),
            |p| format!("ip:{}", p.addr.ip()).into(),
        )
    };
    let caller = identify(credentials, &request, peer);
    let refuse = |refusal: Refusal, retry_after: Option<u64>| {
        tracing::debug!(
            reason = refusal.as_str(),
            path = request.uri().path(),
            peer = %peer_key(),
            "HTTP request refused"
        );
        refusal_response(guard, refusal, retry_after)
    };
    if let Some(limiter) = &guard.rate {
        let key = match &caller {
            Caller::Known(name) => name.clone(),
            _ => peer_key(),
        };
        if let Err(not_until) = limiter.check_key(&key) {
            let wait = not_until.wait_time_from(limiter.clock().now());
            // Whole seconds, rounded up: Retry-After has no finer unit.
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            return refuse(Refusal::RateLimited, Some(seconds.max(1)));
        }
    }
    match caller {
        Caller::Missing => return refuse(Refusal::MissingCredential, None),
        Caller::Wrong => return refuse(Refusal::WrongCredential, None),
        Caller::Known(_) | Caller::Anyone => {}
    }
    let Ok(_permit) = guard.in_flight.clone().try_acquire_owned() else {
        return refuse(Refusal::Overloaded, Some(1));
    };
    let request = match read_body(request, guard.max_body_bytes, guard.body_timeout).await {
        Ok(request) => request,
        Err((refusal, path)) => {
            tracing::debug!(reason = refusal.as_str(), path, "HTTP request refused");
            return refusal_response(guard, refusal, None);
        }
    };
    next.run(request).await
}

/// Who a request comes from, by the credentials `credentials` accepts.
fn identify(credentials: &Credentials, request: &Request, peer: Option<&Peer>) -> Caller {
    if !credentials.required() {
        return Caller::Anyone;
    }
    if credentials.client_certificates
        && let Some(name) = peer.and_then(|p| p.certificate.clone())
    {
        return Caller::Known(name);
    }
    let Some(authorization) = request.headers().get(header::AUTHORIZATION) else {
        return Caller::Missing;
    };
    let token = authorization.to_str().ok().and_then(|value| {
        let (scheme, token) = value.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    });
    match (token, &credentials.tokens) {
        (Some(token), Some(tokens)) => tokens.caller(token).map_or(Caller::Wrong, Caller::Known),
        _ => Caller::Wrong,
    }
}

/// The request with its body read whole, or why it was refused (and its path, for the log).
async fn read_body(
    request: Request,
    max_bytes: usize,
    timeout: Duration,
) -> Result<Request, (Refusal, String)> {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let (parts, body) = request.into_parts();
    let refused = |refusal| (refusal, parts.uri.path().to_string());
    let deadline = tokio::time::Instant::now() + timeout;
    let mut stream = body.into_data_stream();
    let read = async {
        if declared.is_some_and(|n| n > max_bytes as u64) {
            return Err(Refusal::BodyTooLarge);
        }
        let mut chunks: Vec<Bytes> = Vec::new();
        let mut total = 0usize;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|_| Refusal::BodyIncomplete)?;
            total += chunk.len();
            if total > max_bytes {
                return Err(Refusal::BodyTooLarge);
            }
            chunks.push(chunk);
        }
        Ok(match chunks.len() {
            0 => Bytes::new(),
            1 => chunks.swap_remove(0),
            _ => Bytes::from(chunks.concat()),
        })
    };
    match tokio::time::timeout_at(deadline, read).await {
        Ok(Ok(bytes)) => Ok(Request::from_parts(parts, Body::from(bytes))),
        Ok(Err(Refusal::BodyTooLarge)) => {
            // A client still sending when the connection closes sees it reset, not the answer:
            // the rest of a body up to as large again is read and dropped first (within the
            // body's deadline, and at most a few seconds); a larger one is not worth it.
            let rest_fits = declared.is_none_or(|n| n <= 2 * max_bytes as u64);
            if rest_fits {
                let drain = async {
                    let mut drained = 0usize;
                    while let Some(Ok(chunk)) = stream.next().await {
                        drained += chunk.len();
                        if drained > max_bytes {
                            break;
                        }
                    }
                };
                let _ = tokio::time::timeout_at(
                    deadline.min(tokio::time::Instant::now() + DRAIN_AT_MOST),
                    drain,
                )
                .await;
            }
            Err(refused(Refusal::BodyTooLarge))
        }
        Ok(Err(refusal)) => Err(refused(refusal)),
        Err(_) => Err(refused(Refusal::BodyTimeout)),
    }
}

fn refusal_response(guard: &Inner, refusal: Refusal, retry_after: Option<u64>) -> Response {
    guard.refused.count(refusal);
    let mut response = (
        refusal.status(),
        axum::Json(json!({ "error": refusal.message(guard) })),
    )
        .into_response();
    let headers = response.headers_mut();
    match refusal {
        Refusal::MissingCredential => {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"freshet\""),
            );
        }
        Refusal::WrongCredential => {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"freshet\", error=\"invalid_token\""),
            );
        }
        _ => {}
    }
    if let Some(seconds) = retry_after {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    if matches!(refusal, Refusal::BodyTooLarge | Refusal::BodyTimeout) {
        // The rest of the body is not read: the connection cannot carry another request.
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

#[cfg(test)]
mod tests {
    use axum::routing::{get, post};
    use tower::ServiceExt;

    use super::*;

    const TOKEN: &str = "serving-token-0123456789";
    const OTHER: &str = "another-token-0123456789";

    struct Fixture {
        _dir: tempfile::TempDir,
        guard: HttpGuard,
        router: Router,
    }

    fn fixture(configure: impl FnOnce(&mut HttpArgs)) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let tokens = dir.path().join("tokens");
        std::fs::write(&tokens, format!("{TOKEN}\n{OTHER}\n")).unwrap();
        let mut args = HttpArgs {
            tokens: Some(tokens),
            ..HttpArgs::default()
        };
        configure(&mut args);
        let guard = HttpGuard::new(&args, None).unwrap();
        let routes = Router::new()
            .route("/echo", post(|body: Bytes| async move { body }))
            .route("/state", get(|| async { "state" }));
        let router = guard.protect(Surface::Serving, routes);
        Fixture {
            _dir: dir,
            guard,
            router,
        }
    }

    fn request(method: &str, path: &str, token: Option<&str>, body: &'static str) -> Request {
        let mut builder = Request::builder().method(method).uri(path);
        if let Some(token) = token {
            builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        builder.body(Body::from(body)).unwrap()
    }

    async fn send(router: &Router, request: Request) -> Response {
        router.clone().oneshot(request).await.unwrap()
    }

    #[tokio::test]
    async fn asks_for_a_held_token() {
        let f = fixture(|_| {});
        let served = send(&f.router, request("GET", "/state", Some(TOKEN), "")).await;
        assert_eq!(served.status(), StatusCode::OK);
        let lowercase = Request::builder()
            .uri("/state")
            .header(header::AUTHORIZATION, format!("bearer {OTHER}"))
            .body(Body::empty())
            .unwrap();
        assert_eq!(send(&f.router, lowercase).await.status(), StatusCode::OK);

        let missing = send(&f.router, request("GET", "/state", None, "")).await;
        assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
        assert!(missing.headers().contains_key(header::WWW_AUTHENTICATE));
        let wrong = send(
            &f.router,
            request("GET", "/state", Some("x".repeat(24).as_str()), ""),
        )
        .await;
        assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
        let basic = Request::builder()
            .uri("/state")
            .header(header::AUTHORIZATION, format!("Basic {TOKEN}"))
            .body(Body::empty())
            .unwrap();
        assert_eq!(
            send(&f.router, basic).await.status(),
            StatusCode::UNAUTHORIZED
        );
        let refused = f.guard.refusals();
        assert_eq!(refused.get(Refusal::MissingCredential), 1);
        assert_eq!(refused.get(Refusal::WrongCredential), 2);
    }

    #[tokio::test]
    async fn an_open_surface_asks_for_nothing() {
        let f = fixture(|args| args.tokens = None);
        assert!(!f.guard.requires_credentials());
        let served = send(&f.router, request("GET", "/state", None, "")).await;
        assert_eq!(served.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn refuses_a_body_over_the_limit_whether_declared_or_not() {
        let f = fixture(|args| args.max_body_bytes = 8);
        let fits = send(&f.router, request("POST", "/echo", Some(TOKEN), "12345678")).await;
        assert_eq!(fits.status(), StatusCode::OK);
        let declared = send(
            &f.router,
            request("POST", "/echo", Some(TOKEN), "123456789"),
        )
        .await;
        assert_eq!(declared.status(), StatusCode::PAYLOAD_TOO_LARGE);
        // Streamed, with no length declared.
        let chunks = futures::stream::iter(["12345", "6789"].map(Ok::<_, std::io::Error>));
        let streamed = Request::builder()
            .method("POST")
            .uri("/echo")
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
            .body(Body::from_stream(chunks))
            .unwrap();
        assert_eq!(
            send(&f.router, streamed).await.status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert_eq!(f.guard.refusals().get(Refusal::BodyTooLarge), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn refuses_a_body_that_does_not_arrive_in_time() {
        let f = fixture(|args| args.body_timeout = Duration::from_secs(1));
        let never = futures::stream::pending::<Result<Bytes, std::io::Error>>();
        let slow = Request::builder()
            .method("POST")
            .uri("/echo")
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
            .body(Body::from_stream(never))
            .unwrap();
        let response = send(&f.router, slow).await;
        assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(f.guard.refusals().get(Refusal::BodyTimeout), 1);
    }

    #[tokio::test]
    async fn a_caller_over_its_rate_waits_while_others_are_served() {
        let f = fixture(|args| {
            args.rate = 1;
            args.burst = Some(2);
        });
        for _ in 0..2 {
            let served = send(&f.router, request("GET", "/state", Some(TOKEN), "")).await;
            assert_eq!(served.status(), StatusCode::OK);
        }
        let throttled = send(&f.router, request("GET", "/state", Some(TOKEN), "")).await;
        assert_eq!(throttled.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(throttled.headers()[header::RETRY_AFTER], "1");
        // Another caller has a bucket of its own.
        let other = send(&f.router, request("GET", "/state", Some(OTHER), "")).await;
        assert_eq!(other.status(), StatusCode::OK);
        assert_eq!(f.guard.refusals().get(Refusal::RateLimited), 1);
    }

    #[tokio::test]
    async fn refuses_beyond_the_requests_in_flight() {
        let f = fixture(|args| args.max_in_flight = 1);
        let (entered, mut inside) = tokio::sync::mpsc::channel::<()>(1);
        let (release, released) = tokio::sync::watch::channel(false);
        let routes = Router::new().route(
            "/slow",
            get(move || {
                let (entered, mut released) = (entered.clone(), released.clone());
                async move {
                    let _ = entered.send(()).await;
                    let _ = released.wait_for(|r| *r).await;
                    "done"
                }
            }),
        );
        let router = f.guard.protect(Surface::Serving, routes);
        let first = tokio::spawn(send_owned(
            router.clone(),
            request("GET", "/slow", Some(TOKEN), ""),
        ));
        inside.recv().await.unwrap();
        let second = send(&router, request("GET", "/slow", Some(OTHER), "")).await;
        assert_eq!(second.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(second.headers()[header::RETRY_AFTER], "1");
        release.send(true).unwrap();
        assert_eq!(first.await.unwrap().status(), StatusCode::OK);
        let third = send(&router, request("GET", "/slow", Some(OTHER), "")).await;
        assert_eq!(third.status(), StatusCode::OK);
    }

    async fn send_owned(router: Router, request: Request) -> Response {
        router.oneshot(request).await.unwrap()
    }

    #[test]
    fn every_reason_is_counted_from_zero() {
        let refusals = Refusals::default();
        let mut metrics = String::new();
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("http_refused", "", refusals.0.clone());
        prometheus_client::encoding::text::encode(&mut metrics, &registry).unwrap();
        for refusal in Refusal::ALL {
            assert!(
                metrics.contains(&format!("reason=\"{}\"}} 0", refusal.as_str())),
                "{metrics}"
            );
        }
    }
}
