//! Connecting to NATS with the configured servers, credentials and TLS.

use std::time::Duration;

use async_nats::{ConnectOptions, ServerAddr};

use crate::config::NatsArgs;

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("NATS URL {url:?} is invalid: {source}")]
    BadUrl {
        url: String,
        source: async_nats::Error,
    },
    #[error("cannot read NATS credentials file {path}: {source}")]
    Credentials {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Incomplete(&'static str),
    #[error("cannot connect to NATS at {urls}: {source}")]
    Connect {
        urls: String,
        source: async_nats::ConnectError,
    },
}

/// Chooses the process's TLS crypto provider (ring), once; later calls do nothing.
///
/// The NATS client brings rustls with ring and the S3 client (in the programs that link the model
/// crate) brings it with aws-lc-rs; with two providers compiled in, rustls cannot pick one by
/// itself and panics at the first TLS connection. [`connect`] calls this; a program making TLS connections of its own calls it first.
pub fn choose_tls_provider() {
    // An error means a provider is already installed, which is all this wants.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Connects to NATS. `name` shows in the server's connection list (`nats server report connections`).
///
/// The client reconnects forever after a connection is lost, with a capped backoff, so a
/// function rides out a server restart; at start-up it also waits for a server that is not up yet.
pub async fn connect(args: &NatsArgs, name: &str) -> Result<async_nats::Client, ConnectError> {
    choose_tls_provider();
    let servers = args
        .urls
        .iter()
        .map(|url| {
            url.parse::<ServerAddr>()
                .map_err(|source| ConnectError::BadUrl {
                    url: url.clone(),
                    source: source.into(),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut options = ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5))
        .reconnect_delay_callback(|attempt| {
            Duration::from_millis((50u64 << attempt.min(6)).min(2_000))
        })
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => tracing::info!("connected to NATS"),
                async_nats::Event::Disconnected => {
                    tracing::warn!("disconnected from NATS; reconnecting")
                }
                // A permissions violation arrives here and nowhere else: the request that caused
                // it only times out. It names the subject this user may not use.
                async_nats::Event::ServerError(error) => {
                    tracing::error!(%error, "the NATS server refused an operation")
                }
                other => tracing::debug!(event = %other, "NATS connection event"),
            }
        });
    if let Some(path) = &args.creds {
        options =
            options
                .credentials_file(path)
                .await
                .map_err(|source| ConnectError::Credentials {
                    path: path.display().to_string(),
                    source,
                })?;
    }
    match (&args.user, &args.password) {
        (Some(user), Some(password)) => {
            options = options.user_and_password(user.clone(), password.clone())
        }
        (None, None) => {}
        _ => {
            return Err(ConnectError::Incomplete(
                "--nats-user and --nats-password go together",
            ));
        }
    }
    if let Some(token) = &args.token {
        options = options.token(token.clone());
    }
    if let Some(seed) = &args.nkey_seed {
        options = options.nkey(seed.clone());
    }
    if let Some(ca) = &args.tls_ca {
        options = options.require_tls(true).add_root_certificates(ca.clone());
    }
    match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            options = options
                .require_tls(true)
                .add_client_certificate(cert.clone(), key.clone())
        }
        (None, None) => {}
        _ => {
            return Err(ConnectError::Incomplete(
                "--nats-tls-cert and --nats-tls-key go together",
            ));
        }
    }
    options
        .connect(servers)
        .await
        .map_err(|source| ConnectError::Connect {
            urls: args.urls.join(","),
            source,
        })
}
