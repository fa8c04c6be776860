//! The least-privilege users of infra/nats (users.conf + permissions.conf), loaded by a real
//! nats-server: each function's user can do its own work and is denied outside it. featurize
//! cannot move a model pointer, predict cannot write EXAMPLES, a producer can publish events and
//! not write features (each refused write fails for the caller and changes nothing); a wrong
//! password is refused. The server's errors are shown when an assertion fails.
//!
//! And the pipeline runs under those users: featurize, train, drift and predict, each connected
//! as its own user with `--provision verify` (no right to create streams), turn a producer's
//! events into a live version that a client's request is served by, and none of them is refused
//! anything; on a server nobody provisioned, a function in verify mode exits with an error that
//! says what to run.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use freshet::serving::PredictRequest;
use freshet::subjects::{BUCKET_FEATURES, BUCKET_MODELS, Subjects};
use freshet::topology::{self, Topology};
use freshet_cli::stack::FunctionProcess;
use freshet_model::store::{ArtifactStore, Pointers};
use freshet_tests::{
    ConfiguredServer, bookstore_events, event_message, eventually, function_log, live_through,
    spawn_function,
};

const USERS: [&str; 7] = [
    "featurize",
    "train",
    "drift",
    "predict",
    "producer",
    "client",
    "admin",
];

/// nats-server with the infra users, on a loopback port.
struct SecuredServer {
    _server: ConfiguredServer,
    url: String,
    _dir: tempfile::TempDir,
}

fn password(user: &str) -> String {
    format!("{user}-secret")
}

fn start_server() -> anyhow::Result<SecuredServer> {
    let dir = tempfile::tempdir()?;
    let infra = Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra/nats");
    for file in ["users.conf", "permissions.conf"] {
        std::fs::copy(infra.join(file), dir.path().join(file))?;
    }
    let store = dir.path().join("js");
    let passwords: Vec<(String, String)> = USERS
        .iter()
        .map(|user| {
            (
                format!("FRESHET_{}_PASSWORD", user.to_uppercase()),
                password(user),
            )
        })
        .collect();
    let server = ConfiguredServer::start(
        dir.path(),
        |port| {
            format!(
                "listen: 127.0.0.1:{port}\njetstream {{ store_dir: \"{}\" }}\ninclude ./users.conf\n",
                store.display()
            )
        },
        &passwords,
    )?;
    Ok(SecuredServer {
        url: format!("nats://127.0.0.1:{}", server.port),
        _server: server,
        _dir: dir,
    })
}

/// A connection as `user`, and the server errors it has been sent (for failure messages).
async fn connect(
    server: &SecuredServer,
    user: &str,
) -> anyhow::Result<(async_nats::Client, Arc<Mutex<Vec<String>>>)> {
    let errors = Arc::new(Mutex::new(Vec::new()));
    let seen = errors.clone();
    let client = async_nats::ConnectOptions::with_user_and_password(user.into(), password(user))
        .request_timeout(Some(Duration::from_secs(2)))
        .event_callback(move |event| {
            let seen = seen.clone();
            async move {
                if let async_nats::Event::ServerError(error) = event {
                    seen.lock().unwrap().push(error.to_string());
                }
            }
        })
        .connect(&server.url)
        .await?;
    Ok((client, errors))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_function_is_denied_outside_its_subjects() -> anyhow::Result<()> {
    let server = start_server()?;
    let subjects = Subjects::default();

    // A wrong password is refused outright.
    let intruder =
        async_nats::ConnectOptions::with_user_and_password("admin".into(), "guess".into())
            .connect(&server.url)
            .await;
    assert!(intruder.is_err(), "a wrong password connected");

    // The admin provisions the topology.
    let (admin, _) = connect(&server, "admin").await?;
    let admin_js = jetstream::new(admin.clone());
    topology::provision(&admin_js, &Topology::builtin(), &subjects).await?;

    // featurize: writes FEATURES, may not move a model pointer.
    let (featurize, errors) = connect(&server, "featurize").await?;
    let js = jetstream::new(featurize.clone());
    let features = js.get_key_value(BUCKET_FEATURES).await?;
    features.put("user.u1", "{}".into()).await?;
    let models = js.get_key_value(BUCKET_MODELS).await?;
    let moved = models.put("bookstore.live", "{}".into()).await;
    assert!(
        moved.is_err(),
        "featurize moved a model pointer; server errors: {:?}",
        errors.lock().unwrap()
    );
    let admin_models = admin_js.get_key_value(BUCKET_MODELS).await?;
    assert!(admin_models.get("bookstore.live").await?.is_none());

    // predict: may not write EXAMPLES.
    let (predict, errors) = connect(&server, "predict").await?;
    let examples = subjects.examples(&"bookstore".parse()?);
    let published = jetstream::new(predict)
        .publish(examples.clone(), "{}".into())
        .await;
    let stored = match published {
        Ok(ack) => ack.await.is_ok(),
        Err(_) => false,
    };
    assert!(
        !stored,
        "predict wrote an example; server errors: {:?}",
        errors.lock().unwrap()
    );

    // producer: events only.
    let (producer, _) = connect(&server, "producer").await?;
    let producer_js = jetstream::new(producer.clone());
    producer_js
        .publish(subjects.event("new_item", "b1"), "{}".into())
        .await?
        .await?;
    let forged = producer_js
        .publish("$KV.FEATURES.user.u1", "forged".into())
        .await;
    let forged = match forged {
        Ok(ack) => ack.await.is_ok(),
        Err(_) => false,
    };
    assert!(!forged, "a producer wrote a feature");
    let admin_features = admin_js.get_key_value(BUCKET_FEATURES).await?;
    assert_eq!(
        admin_features.get("user.u1").await?.as_deref(),
        Some(&b"{}"[..]),
        "featurize's own write stands, the producer's never landed"
    );
    Ok(())
}

/// Starts `function` connected as its own user, verifying the topology rather than creating it.
fn spawn_as(
    server: &SecuredServer,
    function: &str,
    args: &[&str],
    dir: &Path,
) -> anyhow::Result<FunctionProcess> {
    let envs = [
        ("FRESHET_NATS_URL", server.url.clone()),
        ("FRESHET_NATS_USER", function.to_string()),
        ("FRESHET_NATS_PASSWORD", password(function)),
        ("FRESHET_PROVISION", "verify".into()),
        (
            "FRESHET_OBJECT_STORE",
            format!("file://{}", dir.join("artifacts").display()),
        ),
    ];
    spawn_function(function, args, &envs, dir)
}

fn log(dir: &Path, function: &str) -> String {
    function_log(dir, function)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_runs_with_each_function_as_its_own_user() -> anyhow::Result<()> {
    let server = start_server()?;
    let dir = tempfile::tempdir()?;
    let subjects = Subjects::default();

    // Nobody provisioned yet: a function that may only verify says what to do, and exits.
    let mut early = spawn_as(&server, "featurize", &[], dir.path())?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = early.try_status()? {
            break status;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "featurize did not give up:\n{}",
            log(dir.path(), "featurize")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!status.success());
    let early_log = log(dir.path(), "featurize");
    assert!(
        early_log.contains("does not exist") && early_log.contains("freshet provision"),
        "{early_log}"
    );

    let (admin, _) = connect(&server, "admin").await?;
    let admin_js = jetstream::new(admin);
    topology::provision(&admin_js, &Topology::builtin(), &subjects).await?;
    let _featurize = spawn_as(&server, "featurize", &["--label-horizon", "0s"], dir.path())?;
    let _train = spawn_as(
        &server,
        "train",
        &[
            "--publish-every-batches",
            "1",
            "--publish-interval",
            "200ms",
        ],
        dir.path(),
    )?;
    let _drift = spawn_as(&server, "drift", &[], dir.path())?;
    let _predict = spawn_as(&server, "predict", &[], dir.path())?;

    // The producer publishes the events; nothing else touches the pipeline.
    let (producer, _) = connect(&server, "producer").await?;
    let producer_js = jetstream::new(producer);
    for event in bookstore_events(20, 200, "lp") {
        let (subject, message) = event_message(&subjects, &event)?;
        producer_js.send_publish(subject, message).await?.await?;
    }

    let model = freshet::ids::ModelName::parse("bookstore")?;
    let pointers = Pointers::new(admin_js.get_key_value(BUCKET_MODELS).await?);
    let artifacts = ArtifactStore::from_url(&format!(
        "file://{}",
        dir.path().join("artifacts").display()
    ))?;
    let logs = || {
        ["featurize", "train", "drift", "predict"]
            .map(|f| format!("--- {f}\n{}", log(dir.path(), f)))
            .join("\n")
    };
    let live = eventually(
        Duration::from_secs(90),
        "a live version that learned every example",
        || live_through(&pointers, &artifacts, &model, 200),
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", logs()))?;

    // A client (its own user, allowed only to ask) is served by that version.
    let (client, _) = connect(&server, "client").await?;
    let request = PredictRequest {
        user: Some("u1".parse()?),
        item: Some("b2".parse()?),
        ..Default::default()
    };
    let endpoint = freshet::serving::endpoint_single(&subjects, &model);
    let reply = eventually(
        Duration::from_secs(30),
        "a reply from the live version",
        || async {
            let reply: freshet::serving::PredictResponse =
                freshet::serving::call(&client, endpoint.clone(), &request, Duration::from_secs(2))
                    .await
                    .ok()?;
            (reply.version >= live.version).then_some(reply)
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", logs()))?;
    assert!(reply.score > 0.0 && reply.score < 1.0);

    // No function was refused anything on the way.
    let all = logs();
    assert!(
        !all.contains("refused an operation") && !all.contains("Permissions Violation"),
        "{all}"
    );
    Ok(())
}
