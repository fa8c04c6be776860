//! Settings shared by every function and the CLI, from command-line flags or environment variables.
//!
//! Each setting is documented once, on its field: clap turns those doc comments into `--help`,
//! and the README's configuration table repeats the same names. Function-specific settings live
//! beside each function and flatten [`CommonArgs`] in.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::subjects::{DEFAULT_PREFIX, Subjects};
use crate::topology::{Topology, TopologyError};

/// Parses a human-readable duration ("5s", "1m", "250ms", "1h 30m"): the `value_parser` of every
/// duration flag, so all of them read alike.
pub use humantime::parse_duration;

/// The `value_parser` of a flag that takes a finite number above zero (a rate, say); the flag's
/// help says what the number measures, and clap's error names the flag.
pub fn parse_positive(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(value) if value.is_finite() && value > 0.0 => Ok(value),
        _ => Err(format!("{text:?} is not a positive number")),
    }
}

/// The `value_parser` of a flag that takes a finite number of zero or more.
pub fn parse_non_negative(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(value) if value.is_finite() && value >= 0.0 => Ok(value),
        _ => Err(format!("{text:?} is not a number of zero or more")),
    }
}

/// The `value_parser` of a flag that takes a fraction (a share, a chance) from 0 to 1.
pub fn parse_fraction(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(value) if (0.0..=1.0).contains(&value) => Ok(value),
        _ => Err(format!("{text:?} is not a fraction from 0 to 1")),
    }
}

/// How to reach NATS and prove who we are.
#[derive(Debug, Clone, Args)]
pub struct NatsArgs {
    /// NATS server URL(s), comma-separated; a client fails over between them
    #[arg(
        long = "nats-url",
        env = "FRESHET_NATS_URL",
        value_delimiter = ',',
        default_value = "nats://127.0.0.1:4222"
    )]
    pub urls: Vec<String>,
    /// NATS credentials file (JWT and nkey seed), for decentralised auth
    #[arg(long = "nats-creds", env = "FRESHET_NATS_CREDS")]
    pub creds: Option<PathBuf>,
    /// NATS user name (with --nats-password)
    #[arg(long = "nats-user", env = "FRESHET_NATS_USER")]
    pub user: Option<String>,
    /// NATS password (with --nats-user)
    #[arg(
        long = "nats-password",
        env = "FRESHET_NATS_PASSWORD",
        hide_env_values = true
    )]
    pub password: Option<String>,
    /// NATS authentication token
    #[arg(
        long = "nats-token",
        env = "FRESHET_NATS_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// NATS nkey seed (starts with "SU"), for nkey authentication
    #[arg(
        long = "nats-nkey-seed",
        env = "FRESHET_NATS_NKEY_SEED",
        hide_env_values = true
    )]
    pub nkey_seed: Option<String>,
    /// CA certificate (PEM) to verify the NATS server's TLS certificate; turns TLS on
    #[arg(long = "nats-tls-ca", env = "FRESHET_NATS_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS (with --nats-tls-key)
    #[arg(long = "nats-tls-cert", env = "FRESHET_NATS_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// Client private key (PEM) for mutual TLS (with --nats-tls-cert)
    #[arg(long = "nats-tls-key", env = "FRESHET_NATS_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// JetStream domain to address: the hub's, for a function at an edge site whose server is a
    /// leaf node without JetStream of its own (its JetStream requests cross the leaf connection
    /// only under the hub's domain)
    #[arg(long = "jetstream-domain", env = "FRESHET_JETSTREAM_DOMAIN")]
    pub jetstream_domain: Option<String>,
}

impl NatsArgs {
    /// The JetStream context for `client`, in the configured domain if any.
    pub fn jetstream(&self, client: async_nats::Client) -> async_nats::jetstream::Context {
        match &self.jetstream_domain {
            Some(domain) => async_nats::jetstream::with_domain(client, domain),
            None => async_nats::jetstream::new(client),
        }
    }
}

impl Default for NatsArgs {
    fn default() -> Self {
        NatsArgs {
            urls: vec!["nats://127.0.0.1:4222".to_string()],
            creds: None,
            user: None,
            password: None,
            token: None,
            nkey_seed: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            jetstream_domain: None,
        }
    }
}

/// Settings every function and the CLI share.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Prefix of every subject freshet publishes or subscribes to
    #[arg(long = "subject-prefix", env = "FRESHET_SUBJECT_PREFIX", default_value = DEFAULT_PREFIX)]
    pub subject_prefix: String,
    /// Topology file (streams, buckets, consumers; TOML); the built-in infra/topology.toml if unset
    #[arg(long = "topology", env = "FRESHET_TOPOLOGY")]
    pub topology: Option<PathBuf>,
    /// How long JetStream remembers a message id on EVENTS and EXAMPLES, so an event a producer
    /// sends again (a retry after a lost acknowledgement) is stored once: a retry must come
    /// within it. The server keeps each id for the window, about 200 bytes, so it costs about
    /// 200 B × events per second × window (120 MB at 1,000 events/s for 10 minutes). Overrides
    /// the topology file's duplicate_window for those two streams [default: the file's, 10m]
    #[arg(long = "duplicate-window", env = "FRESHET_DUPLICATE_WINDOW", value_parser = parse_duration)]
    pub duplicate_window: Option<Duration>,
}

impl CommonArgs {
    pub fn subjects(&self) -> Result<Subjects, crate::subjects::PrefixError> {
        Subjects::new(&self.subject_prefix)
    }

    pub fn topology(&self) -> Result<Topology, TopologyError> {
        let topology = match &self.topology {
            Some(path) => Topology::from_file(path)?,
            None => Topology::builtin(),
        };
        Ok(match self.duplicate_window {
            Some(window) => topology.with_duplicate_window(window),
            None => topology,
        })
    }
}

/// The largest request body an HTTP server accepts by default: a full batch of
/// [`crate::serving::MAX_BATCH_ROWS`] rows in JSON is far below it.
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// Who may call an HTTP server (a function's, or `freshet view`'s) and how much: the settings of
/// [`crate::runtime::http::HttpGuard`]. Health probes are never guarded.
#[derive(Debug, Clone, Args)]
pub struct HttpArgs {
    /// Bearer tokens accepted on the routes that serve or take data (not the probes, not
    /// /metrics): a file with one token per line (blank lines and lines starting with # are
    /// skipped), or a directory (a mounted Kubernetes Secret) with one token per file, each
    /// caller named by its file. Callers send `Authorization: Bearer <token>`. Re-read every
    /// --http-tokens-reload, so a token removed stops working without a restart
    #[arg(long = "http-tokens", env = "FRESHET_HTTP_TOKENS")]
    pub tokens: Option<PathBuf>,
    /// How often the token files are re-read
    #[arg(long = "http-tokens-reload", env = "FRESHET_HTTP_TOKENS_RELOAD", default_value = "5s", value_parser = parse_duration)]
    pub tokens_reload: Duration,
    /// Certificate chain (PEM) of the HTTP server: it then speaks HTTPS only (with
    /// --http-tls-key)
    #[arg(
        long = "http-tls-cert",
        env = "FRESHET_HTTP_TLS_CERT",
        requires = "https_key"
    )]
    pub https_cert: Option<PathBuf>,
    /// Private key (PEM) of the HTTP server's certificate
    #[arg(
        long = "http-tls-key",
        env = "FRESHET_HTTP_TLS_KEY",
        requires = "https_cert"
    )]
    pub https_key: Option<PathBuf>,
    /// CA certificates (PEM) whose client certificates are accepted as credentials, beside the
    /// tokens (mutual TLS; needs --http-tls-cert). A certificate from another CA fails the
    /// handshake; a client without one may still present a token
    #[arg(
        long = "http-client-ca",
        env = "FRESHET_HTTP_CLIENT_CA",
        requires = "https_cert"
    )]
    pub client_ca: Option<PathBuf>,
    /// Largest request body accepted, in bytes; a larger one is answered 413
    #[arg(long = "http-max-body-bytes", env = "FRESHET_HTTP_MAX_BODY_BYTES", default_value_t = DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,
    /// Most requests handled at once; beyond, 503 with Retry-After (probes are not counted)
    #[arg(
        long = "http-max-in-flight",
        env = "FRESHET_HTTP_MAX_IN_FLIGHT",
        default_value_t = 1024
    )]
    pub max_in_flight: usize,
    /// Requests per second each caller may make (a token bucket per token or client
    /// certificate, else per peer address); beyond, 429 with Retry-After. 0: no limit
    #[arg(long = "http-rate", env = "FRESHET_HTTP_RATE", default_value_t = 0)]
    pub rate: u32,
    /// Requests a caller may make at once above its rate, after a quiet spell [default: one
    /// second's worth, --http-rate]
    #[arg(long = "http-burst", env = "FRESHET_HTTP_BURST")]
    pub burst: Option<u32>,
    /// Longest wait for a request's headers (and for a TLS handshake); the connection is closed
    /// after it. A kept-alive connection idle this long is closed too
    #[arg(long = "http-header-timeout", env = "FRESHET_HTTP_HEADER_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub header_timeout: Duration,
    /// Longest wait for a request's whole body; beyond, 408
    #[arg(long = "http-body-timeout", env = "FRESHET_HTTP_BODY_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub body_timeout: Duration,
}

impl Default for HttpArgs {
    fn default() -> Self {
        HttpArgs {
            tokens: None,
            tokens_reload: Duration::from_secs(5),
            https_cert: None,
            https_key: None,
            client_ca: None,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_in_flight: 1024,
            rate: 0,
            burst: None,
            header_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(30),
        }
    }
}

/// Whether a function takes CloudEvents pushed to `POST /events` (Knative Eventing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PushEvents {
    /// No `/events` route (404): events come from the stream only.
    Off,
    /// `/events` takes events from callers with a credential (--http-tokens or
    /// --http-client-ca, one of which must be set).
    On,
    /// `/events` takes events from anyone who reaches the port, and nothing on the port asks
    /// for a credential: for local development, or behind a network policy that admits only the
    /// sender (Knative's Triggers send no credential freshet can check).
    InsecureAnonymous,
}

/// The model a function works for: one flag and one variable in every function, declared once
/// here so a deployment names it the same way everywhere. Each function says what the model is to
/// it with `#[command(mut_arg("model", ...))]`.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// Model this function works for
    #[arg(
        id = "model",
        long = "model",
        env = "FRESHET_MODEL",
        default_value = "bookstore"
    )]
    pub name: crate::ids::ModelName,
}

/// Settings of a long-running function: its HTTP server and its consumer loop.
#[derive(Debug, Clone, Args)]
pub struct FunctionArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Port of the HTTP server: /healthz, /readyz, /metrics, and the function's own routes (0
    /// picks a free port)
    #[arg(long = "http-port", env = "FRESHET_HTTP_PORT", default_value_t = 8080)]
    pub http_port: u16,
    /// Address the HTTP server binds to
    #[arg(
        long = "http-addr",
        env = "FRESHET_HTTP_ADDR",
        default_value = "0.0.0.0"
    )]
    pub http_addr: String,
    #[command(flatten)]
    pub http: HttpArgs,
    /// Bearer tokens accepted on /metrics (a file or a directory, as --http-tokens, and re-read
    /// alike); /metrics is open when unset. Prometheus sends one with `authorization:
    /// credentials_file`
    #[arg(long = "metrics-tokens", env = "FRESHET_METRICS_TOKENS")]
    pub metrics_tokens: Option<PathBuf>,
    /// Whether POST /events takes pushed CloudEvents (featurize, train, drift): "off", "on"
    /// (callers with a credential only) or "insecure-anonymous" (anyone who reaches the port)
    #[arg(
        long = "events",
        env = "FRESHET_EVENTS",
        value_enum,
        default_value = "off"
    )]
    pub events: PushEvents,
    /// Most messages fetched and handled as one batch [default: 256; featurize: 1024, where a
    /// batch writes each entity it touches once, so a larger one folds more of a popular
    /// entity's events into one write]
    #[arg(long = "batch-size", env = "FRESHET_BATCH_SIZE")]
    pub batch_size: Option<usize>,
    /// At start-up, "create" the streams and buckets that are missing, or only "verify" they
    /// exist as configured (for a user without the rights to create them: run
    /// `freshet provision` as an operator first)
    #[arg(
        long = "provision",
        env = "FRESHET_PROVISION",
        default_value = "create"
    )]
    pub provision: crate::topology::ProvisionMode,
    /// Longest wait for a batch to fill before handling what has arrived, counted from when its
    /// first message was stored (train: from when it took that message, since its batch is an
    /// optimizer step); messages the stream already held then are always waited for, up to the
    /// batch size [default: 200ms;
    /// featurize: 20ms, which bounds how long an event waits for its example; its state writes
    /// fold many batches together whatever the wait (--write-states-interval)]
    #[arg(long = "batch-wait", env = "FRESHET_BATCH_WAIT", value_parser = parse_duration)]
    pub batch_wait: Option<Duration>,
    /// Largest event accepted, in bytes; larger ones are dead-lettered as oversized
    #[arg(long = "max-event-bytes", env = "FRESHET_MAX_EVENT_BYTES", default_value_t = crate::events::DEFAULT_MAX_EVENT_BYTES)]
    pub max_event_bytes: usize,
    /// Log filter, in tracing's EnvFilter syntax (e.g. "info,freshet=debug")
    #[arg(
        long = "log",
        env = "FRESHET_LOG",
        default_value = "info,async_nats=warn"
    )]
    pub log: String,
    /// Log format: "json" (one object per line) or "text"
    #[arg(
        long = "log-format",
        env = "FRESHET_LOG_FORMAT",
        default_value = "json"
    )]
    pub log_format: String,
    #[command(flatten)]
    pub otlp: crate::telemetry::OtlpArgs,
}

impl FunctionArgs {
    /// The batch size of a function that sets no default of its own.
    pub const DEFAULT_BATCH_SIZE: usize = 256;

    /// The batch wait of a function that sets no default of its own.
    pub const DEFAULT_BATCH_WAIT: Duration = Duration::from_millis(200);

    /// The batch size: as set, else [`FunctionArgs::DEFAULT_BATCH_SIZE`].
    pub fn batch_size(&self) -> usize {
        self.batch_size.unwrap_or(Self::DEFAULT_BATCH_SIZE)
    }

    /// The batch wait: as set, else [`FunctionArgs::DEFAULT_BATCH_WAIT`].
    pub fn batch_wait(&self) -> Duration {
        self.batch_wait.unwrap_or(Self::DEFAULT_BATCH_WAIT)
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    #[test]
    fn numbers_in_range_are_parsed_and_the_rest_refused() {
        assert_eq!(parse_positive("2.5"), Ok(2.5));
        for bad in ["0", "-1", "NaN", "inf", "fast", ""] {
            assert!(parse_positive(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_non_negative("0"), Ok(0.0));
        assert_eq!(parse_non_negative(" 7 "), Ok(7.0));
        for bad in ["-0.1", "NaN", "inf"] {
            assert!(parse_non_negative(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_fraction("0"), Ok(0.0));
        assert_eq!(parse_fraction("1"), Ok(1.0));
        for bad in ["1.01", "-0.5", "NaN", "half"] {
            assert!(parse_fraction(bad).is_err(), "{bad}");
        }
    }

    /// A function's command line, as each function's `main` flattens it.
    #[derive(Debug, Parser)]
    struct Function {
        #[command(flatten)]
        function: FunctionArgs,
    }

    #[test]
    fn the_shared_settings_fit_in_one_command() {
        Function::command().debug_assert();
        let parsed = Function::try_parse_from(["f"]).unwrap();
        assert_eq!(parsed.function.events, PushEvents::Off);
        assert_eq!(parsed.function.http.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
        assert!(Function::try_parse_from(["f", "--http-tls-cert", "c.pem"]).is_err());
        assert!(Function::try_parse_from(["f", "--http-client-ca", "ca.pem"]).is_err());
        let events = Function::try_parse_from(["f", "--events", "insecure-anonymous"]).unwrap();
        assert_eq!(events.function.events, PushEvents::InsecureAnonymous);
    }
}
