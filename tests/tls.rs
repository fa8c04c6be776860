//! TLS with client certificates, as infra/nats/tls.conf configures it: a CA, a server
//! certificate and a client certificate generated here; a function given the CA and its client
//! certificate (FRESHET_NATS_TLS_*) connects and works, and a client with no certificate, or
//! with one from another CA, is refused.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::path::Path;
use std::time::Duration;

use freshet::subjects::{BUCKET_FEATURES, Subjects};
use freshet_features::bookstore::{UserState, user_key};
use freshet_tests::{Authority, ConfiguredServer, cloud_event, eventually, spawn_function};

/// nats-server requiring TLS and a client certificate, on a loopback port.
fn start_server(
    dir: &Path,
    ca: &Path,
    cert: &Path,
    key: &Path,
) -> anyhow::Result<ConfiguredServer> {
    let store = dir.join("js");
    ConfiguredServer::start(
        dir,
        |port| {
            format!(
                "listen: 127.0.0.1:{port}\njetstream {{ store_dir: {:?} }}\n\
                 tls {{ cert_file: {:?}\n key_file: {:?}\n ca_file: {:?}\n verify: true\n timeout: 2 }}\n",
                store.display().to_string(),
                cert.display().to_string(),
                key.display().to_string(),
                ca.display().to_string(),
            )
        },
        &[],
    )
}

async fn connect(
    port: u16,
    ca: &Path,
    client: Option<(&Path, &Path)>,
) -> Result<async_nats::Client, async_nats::ConnectError> {
    let mut options = async_nats::ConnectOptions::new()
        .require_tls(true)
        .add_root_certificates(ca.to_path_buf())
        .connection_timeout(Duration::from_secs(3));
    if let Some((cert, key)) = client {
        options = options.add_client_certificate(cert.to_path_buf(), key.to_path_buf());
    }
    options.connect(format!("tls://127.0.0.1:{port}")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_connect_with_client_certificates_and_others_are_refused() -> anyhow::Result<()> {
    freshet::connect::choose_tls_provider();
    let dir = tempfile::tempdir()?;
    let authority = Authority::new("freshet test CA");
    let ca = authority.write(&dir.path().join("ca.pem"));
    let (server_cert, server_key) = authority.issue(dir.path(), "server");
    let (client_cert, client_key) = authority.issue(dir.path(), "featurize");
    let stranger = Authority::new("another CA");
    let (stranger_cert, stranger_key) = stranger.issue(dir.path(), "stranger");
    let server = start_server(dir.path(), &ca, &server_cert, &server_key)?;

    // Refused: no client certificate; one signed by another CA.
    assert!(
        connect(server.port, &ca, None).await.is_err(),
        "no certificate"
    );
    assert!(
        connect(server.port, &ca, Some((&stranger_cert, &stranger_key)))
            .await
            .is_err(),
        "a certificate from another CA"
    );

    // featurize, given the CA and its certificate, provisions and works.
    let envs = [
        (
            "FRESHET_NATS_URL",
            format!("tls://127.0.0.1:{}", server.port),
        ),
        ("FRESHET_NATS_TLS_CA", ca.display().to_string()),
        ("FRESHET_NATS_TLS_CERT", client_cert.display().to_string()),
        ("FRESHET_NATS_TLS_KEY", client_key.display().to_string()),
    ];
    let _featurize = spawn_function("featurize", &[], &envs, dir.path())?;
    let log = dir.path().join("featurize.log");

    let client = connect(server.port, &ca, Some((&client_cert, &client_key))).await?;
    let js = async_nats::jetstream::new(client);
    let subjects = Subjects::default();
    let event = cloud_event(
        "tls-1",
        "user_action",
        serde_json::json!({"user": "u1", "item": "b1", "action": "view"}),
    );
    // The stream exists once featurize has provisioned it.
    eventually(
        Duration::from_secs(30),
        "featurize to provision EVENTS",
        || async {
            js.publish(
                subjects.event("user_action", "u1"),
                serde_json::to_vec(&event).ok()?.into(),
            )
            .await
            .ok()?
            .await
            .ok()
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", std::fs::read_to_string(&log).unwrap_or_default()))?;
    // Provisioning creates the streams, then the buckets: EVENTS may come first.
    let features = eventually(
        Duration::from_secs(30),
        "featurize to provision FEATURES",
        || async { js.get_key_value(BUCKET_FEATURES).await.ok() },
    )
    .await?;
    let user: UserState = eventually(Duration::from_secs(30), "the view in FEATURES", || async {
        let bytes = features.get(user_key(&"u1".parse().ok()?)).await.ok()??;
        serde_json::from_slice(&bytes).ok()
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", std::fs::read_to_string(&log).unwrap_or_default()))?;
    assert_eq!(user.views, 1);
    Ok(())
}
