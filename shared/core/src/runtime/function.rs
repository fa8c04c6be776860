//! Start-up shared by every function: logging, NATS connection, provisioning, HTTP probes and
//! metrics, and the consumer loop, so each function's `main` is a few lines.

use std::net::SocketAddr;

use anyhow::Context as _;
use async_nats::jetstream;
use axum::Router;

use crate::config::{FunctionArgs, PushEvents};
use crate::connect::connect;
use crate::metrics::Metrics;
use crate::retry::{self, Backoff, Verdict};
use crate::runtime::Readiness;
use crate::runtime::http::{HttpGuard, Surface, metrics_routes, probe_routes, serve};
use crate::runtime::pull::{self, LoopSettings, Processor};
use crate::shutdown::Shutdown;
use crate::store::declarations::DeclareError;
use crate::store::kv::CasError;
use crate::store::lease::Lease;
use crate::store::{DeclarationStore, Declarations};
use crate::subjects::Subjects;
use crate::telemetry::Spans;
use crate::topology::{self, Topology, TopologyError};

/// The exit status of a function that lost its lease (see [`FunctionContext::exclusively`]): it stops
/// at once so as never to work beside the new holder, and expects to be started again.
pub const EXIT_LEASE_LOST: i32 = 3;

/// Longest a function waits at shutdown for its last spans to be exported.
const SPAN_FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Everything a running function needs, built once at start-up.
pub struct FunctionContext {
    pub name: &'static str,
    pub args: FunctionArgs,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub subjects: Subjects,
    pub topology: Topology,
    pub metrics: Metrics,
    pub readiness: Readiness,
    pub shutdown: Shutdown,
    /// Where the spans of sampled traces go (nowhere unless an OTLP endpoint is set).
    pub spans: Spans,
    /// Who may call the HTTP server's routes, and how much.
    pub http: HttpGuard,
}

impl FunctionContext {
    /// Starts logging and span export (when configured), connects to NATS and provisions the
    /// topology (idempotently).
    pub async fn start(name: &'static str, args: FunctionArgs) -> anyhow::Result<FunctionContext> {
        crate::runtime::init_tracing(&args.log, &args.log_format);
        let shutdown = Shutdown::on_signals();
        let subjects = args.common.subjects()?;
        let topology = args.common.topology()?;
        let metrics = Metrics::new(name);
        // Checked before connecting, so a wrong endpoint fails at once.
        let spans =
            Spans::start(&args.otlp, name, &metrics).context("configuring span export (OTEL_*)")?;
        let http = http_guard(&args)?;
        http.register(&metrics);
        http.start(&shutdown);
        let client = connect(&args.common.nats, name).await?;
        let js = args.common.nats.jetstream(client.clone());
        let provisioned = retry::until_done(
            "provisioning the JetStream topology",
            shutdown.clone(),
            Backoff::default(),
            topology_verdict,
            || topology::provision_as(&js, &topology, &subjects, args.provision),
        )
        .await
        .context("provisioning the JetStream topology")?;
        let Some(report) = provisioned else {
            anyhow::bail!("shutdown requested before the topology could be checked");
        };
        for (what, outcome) in report {
            tracing::debug!(%what, ?outcome, "provisioned");
        }
        Ok(FunctionContext {
            name,
            args,
            client,
            js,
            subjects,
            topology,
            metrics,
            readiness: Readiness::default(),
            shutdown,
            spans,
            http,
        })
    }

    /// Exports the spans still queued, waiting at most 2 s: the last thing a function does.
    pub async fn flush_spans(&self) {
        self.spans.flush(SPAN_FLUSH_TIMEOUT).await;
    }

    /// Opens the KV bucket `bucket`, waiting out a server that is unreachable or restarting
    /// (until shutdown); a bucket that does not exist is an error at once.
    pub async fn key_value(&self, bucket: &str) -> anyhow::Result<jetstream::kv::Store> {
        self.until_done(&format!("opening bucket {bucket}"), bucket_verdict, || {
            self.js.get_key_value(bucket)
        })
        .await
    }

    /// Looks up the stream `name`, waiting out a server that is unreachable or restarting (until
    /// shutdown); a stream that does not exist is an error at once.
    pub async fn stream(&self, name: &str) -> anyhow::Result<jetstream::stream::Stream> {
        self.until_done(&format!("looking up stream {name}"), stream_verdict, || {
            self.js.get_stream(name)
        })
        .await
    }

    /// Runs `attempt` until it succeeds, retrying what `classify` calls transient until
    /// shutdown (see [`retry::until_done`]); `what` names it in logs and errors.
    async fn until_done<T, E, Fut>(
        &self,
        what: &str,
        classify: impl Fn(&E) -> Verdict,
        attempt: impl FnMut() -> Fut,
    ) -> anyhow::Result<T>
    where
        E: std::error::Error + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        retry::until_done(
            what,
            self.shutdown.clone(),
            Backoff::default(),
            classify,
            attempt,
        )
        .await
        .with_context(|| what.to_string())?
        .with_context(|| format!("shutdown requested while {what}"))
    }

    /// Declares `schema` as the feature schema of `model`'s examples (see
    /// [`crate::store::declarations`]), waiting out a server that is unreachable or restarting.
    /// A refused declaration (other features under the same version) is an error at once.
    pub async fn declare_schema(
        &self,
        model: &crate::ids::ModelName,
        schema: &crate::examples::FeatureSchema,
    ) -> anyhow::Result<()> {
        let declarations = Declarations::new(self.key_value(crate::subjects::BUCKET_MODELS).await?);
        let declared = self
            .until_done(
                &format!("declaring the schema of model {model}"),
                declare_verdict,
                || declarations.declare(model, schema),
            )
            .await?;
        tracing::info!(model = %model, schema = %schema.name, version = schema.version, features = schema.n_features(),
            outcome = ?declared.judgement, revision = declared.revision, "feature schema declared");
        Ok(())
    }

    /// Serves `/healthz`, `/readyz`, `/metrics` and the function's own `routes`, which are behind
    /// the guard ([`crate::runtime::http::guard`]).
    pub async fn serve_http(&self, routes: Router) -> anyhow::Result<SocketAddr> {
        self.serve_http_with(Router::new(), routes).await
    }

    /// Like [`serve_http`](Self::serve_http), with more routes open to anyone beside the probes
    /// (probes of the function's own protocol).
    pub async fn serve_http_with(
        &self,
        open: Router,
        routes: Router,
    ) -> anyhow::Result<SocketAddr> {
        let router = probe_routes(self.readiness.clone())
            .merge(open)
            .merge(
                self.http
                    .protect(Surface::Metrics, metrics_routes(self.metrics.clone())),
            )
            .merge(self.http.protect(Surface::Serving, routes));
        let (addr, _task) = serve(
            &self.args.http_addr,
            self.args.http_port,
            router,
            &self.http,
            self.shutdown.clone(),
        )
        .await
        .with_context(|| {
            format!(
                "binding HTTP on {}:{}",
                self.args.http_addr, self.args.http_port
            )
        })?;
        Ok(addr)
    }

    /// The `/events` route when `--events` turns it on (no route when off): CloudEvents pushed
    /// over HTTP (Knative Eventing) enter `input`, the stream this function consumes (see
    /// [`crate::runtime::ingress`]). Serve it with [`serve_http`](Self::serve_http), which puts it
    /// behind the guard.
    pub fn ingress(&self, input: crate::runtime::ingress::Input) -> Router {
        if self.args.events == PushEvents::Off {
            return Router::new();
        }
        crate::runtime::ingress::routes(crate::runtime::ingress::Ingress {
            js: self.js.clone(),
            subjects: self.subjects.clone(),
            function: self.name,
            input,
            max_event_bytes: self.args.max_event_bytes,
            spans: self.spans.clone(),
        })
    }

    /// Runs `work` while holding the lease `key` in the LEASES bucket, so that at most one replica
    /// does it at a time; the others stand by until the lease is free (released, or aged out
    /// after the bucket's `max_age` when its holder died). Returns `Ok(())` without running
    /// `work` if shutdown comes while standing by.
    ///
    /// A renewal that fails for want of a server is retried while the lease cannot have aged out.
    /// A lease taken over (or one that may have aged out while this process stalled or could not
    /// reach a server) ends the process at once with status 3, unacknowledged work and all, so two
    /// replicas never do the work together; its messages are redelivered to the new holder.
    pub async fn exclusively<F>(&self, key: &str, work: F) -> anyhow::Result<()>
    where
        F: std::future::Future<Output = anyhow::Result<()>>,
    {
        let ttl = self
            .topology
            .buckets
            .get(crate::subjects::BUCKET_LEASES)
            .and_then(|b| b.max_age)
            .unwrap_or(std::time::Duration::from_secs(10));
        // Unique per process start: the pid alone repeats across hosts and restarts.
        let started = chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default();
        let holder = format!("{}-{}-{started}", self.name, std::process::id());
        let leases = self.key_value(crate::subjects::BUCKET_LEASES).await?;
        let Some(mut lease) = Lease::acquire(
            leases,
            key,
            &holder,
            std::time::Duration::from_millis(500),
            self.shutdown.clone(),
        )
        .await?
        else {
            return Ok(());
        };
        let (release, mut released) = tokio::sync::oneshot::channel::<()>();
        let keeper = tokio::spawn(async move {
            // A renewal that fails for want of a server (one failing over) is retried, as long
            // as the lease cannot have aged out since the last renewal that went through; a
            // lease taken over, or one that may have aged out, ends the process.
            let mut renewed_at = tokio::time::Instant::now();
            let mut retrying = false;
            loop {
                let wait = if retrying { ttl / 20 } else { ttl / 3 };
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {
                        match lease.renew().await {
                            Ok(()) => {
                                renewed_at = tokio::time::Instant::now();
                                retrying = false;
                            }
                            // The entry ages out a full time to live after the last renewal; a
                            // tenth of it is left for the clocks and the round trip.
                            Err(CasError::Failed(err)) if renewed_at.elapsed() < ttl * 9 / 10 => {
                                tracing::warn!(error = %err, "cannot renew the lease yet; retrying");
                                retrying = true;
                            }
                            Err(err) => {
                                tracing::error!(error = %err, "lost the lease; exiting so the new holder works alone");
                                std::process::exit(EXIT_LEASE_LOST);
                            }
                        }
                    }
                    _ = &mut released => {
                        lease.release().await;
                        return;
                    }
                }
            }
        });
        let outcome = work.await;
        let _ = release.send(());
        let _ = keeper.await;
        outcome
    }

    /// Runs `processor` on the durable consumer `durable` of `stream` until shutdown, as the
    /// function's main work: the function is ready while it runs.
    /// `max_held` is the most messages the processor keeps unacknowledged at once (the batch size
    /// for a processor that acknowledges every batch).
    pub async fn consume<P: Processor>(
        &self,
        stream: &str,
        durable: &str,
        filter_subjects: Vec<String>,
        max_held: usize,
        processor: P,
    ) -> anyhow::Result<()> {
        self.consume_with(stream, durable, filter_subjects, max_held, processor, true)
            .await
    }

    /// Like [`consume`](Self::consume), for a consumer that runs beside a function's main work
    /// and has no say in its readiness (predict's outcome join).
    pub async fn consume_alongside<P: Processor>(
        &self,
        stream: &str,
        durable: &str,
        filter_subjects: Vec<String>,
        max_held: usize,
        processor: P,
    ) -> anyhow::Result<()> {
        self.consume_with(stream, durable, filter_subjects, max_held, processor, false)
            .await
    }

    async fn consume_with<P: Processor>(
        &self,
        stream: &str,
        durable: &str,
        filter_subjects: Vec<String>,
        max_held: usize,
        processor: P,
        sets_readiness: bool,
    ) -> anyhow::Result<()> {
        let consumer = self
            .consumer(stream, durable, filter_subjects, max_held)
            .await?;
        if sets_readiness {
            self.readiness.set(true, &self.metrics);
        }
        self.run_loop(stream, durable, max_held, consumer, processor)
            .await;
        if sets_readiness {
            self.readiness.set(false, &self.metrics);
        }
        Ok(())
    }

    async fn consumer(
        &self,
        stream: &str,
        durable: &str,
        filter_subjects: Vec<String>,
        max_held: usize,
    ) -> anyhow::Result<async_nats::jetstream::consumer::PullConsumer> {
        let config = self.topology.consumer_config(
            durable,
            filter_subjects,
            max_held.max(self.args.batch_size()),
        );
        self.until_done(
            &format!("setting up consumer {stream}/{durable}"),
            topology_verdict,
            || topology::ensure_consumer(&self.js, stream, config.clone()),
        )
        .await
    }

    async fn run_loop<P: Processor>(
        &self,
        stream: &str,
        durable: &str,
        max_held: usize,
        consumer: async_nats::jetstream::consumer::PullConsumer,
        processor: P,
    ) {
        let settings = LoopSettings {
            function: self.name.to_string(),
            batch_size: self.args.batch_size().clamp(1, max_held.max(1)),
            batch_wait: self.args.batch_wait(),
            idle_tick: self
                .args
                .batch_wait()
                .max(std::time::Duration::from_millis(50)),
            ack_wait: self.topology.consumers.ack_wait,
            spans: self.spans.clone(),
        };
        tracing::info!(stream, durable, "consuming");
        pull::run(
            self.js.clone(),
            consumer,
            self.subjects.clone(),
            settings,
            self.metrics.clone(),
            processor,
            self.shutdown.clone(),
        )
        .await;
    }
}

/// Whether a declaration may succeed if tried again: one the server did not answer may, one the
/// rule refused never will.
fn declare_verdict(err: &DeclareError) -> Verdict {
    match err {
        DeclareError::Failed(_) | DeclareError::Contended { .. } => Verdict::Transient,
        DeclareError::Refused { .. } => Verdict::Definite,
    }
}

/// Whether provisioning or setting up a consumer may succeed if tried again: a request that got
/// no answer may; a refused setting, a missing stream (for a process that only verifies) or an
/// unreadable topology file never will.
fn topology_verdict(err: &TopologyError) -> Verdict {
    match err {
        TopologyError::JetStream { .. } => Verdict::Transient,
        TopologyError::Read { .. }
        | TopologyError::Parse { .. }
        | TopologyError::Invalid(_)
        | TopologyError::Conflict { .. }
        | TopologyError::Missing { .. } => Verdict::Definite,
    }
}

/// Whether a stream lookup may succeed if tried again: it may unless the server answered with
/// anything but "unavailable" (503; "stream not found" is definite).
fn stream_verdict(err: &jetstream::context::GetStreamError) -> Verdict {
    use jetstream::context::GetStreamErrorKind;
    match err.kind() {
        GetStreamErrorKind::Request => Verdict::Transient,
        GetStreamErrorKind::JetStream(answer) if answer.code() == 503 => Verdict::Transient,
        _ => Verdict::Definite,
    }
}

/// Like [`stream_verdict`], for the lookup of a bucket's stream.
fn bucket_verdict(err: &jetstream::context::KeyValueError) -> Verdict {
    use jetstream::context::KeyValueErrorKind;
    match err.kind() {
        KeyValueErrorKind::GetBucket => std::error::Error::source(err)
            .and_then(|source| source.downcast_ref::<jetstream::context::GetStreamError>())
            .map_or(Verdict::Transient, stream_verdict),
        KeyValueErrorKind::InvalidStoreName | KeyValueErrorKind::JetStream => Verdict::Definite,
    }
}

/// The function's HTTP guard, with `--events` checked against its credentials: pushed events need
/// one unless explicitly opened to anyone, and opening them to anyone asks for none.
fn http_guard(args: &FunctionArgs) -> anyhow::Result<HttpGuard> {
    let http = HttpGuard::new(&args.http, args.metrics_tokens.as_deref())
        .context("configuring the HTTP server (FRESHET_HTTP_*)")?;
    match args.events {
        PushEvents::On if !http.requires_credentials() => anyhow::bail!(
            "--events on takes pushed events only from callers with a credential: set \
             --http-tokens (FRESHET_HTTP_TOKENS) or --http-client-ca (FRESHET_HTTP_CLIENT_CA); \
             --events insecure-anonymous is for local development"
        ),
        PushEvents::InsecureAnonymous if http.requires_credentials() => anyhow::bail!(
            "--events insecure-anonymous asks no caller for a credential, so --http-tokens and \
             --http-client-ca would not be checked: drop them, or use --events on"
        ),
        PushEvents::InsecureAnonymous => tracing::warn!(
            "POST /events takes events from anyone who can reach this port \
             (--events insecure-anonymous): anyone can feed examples to a model"
        ),
        PushEvents::On | PushEvents::Off => {}
    }
    Ok(http)
}
