//! The least-privilege users of infra/nats (users.conf + permissions.conf), loaded by a real
//! nats-server: each function's user can do its own work and is denied outside it. featurize
//! cannot move a model pointer, predict cannot write EXAMPLES, a producer can publish events and
//! not write features (each refused write fails for the caller and changes nothing); a wrong
//! password is refused. The server's errors are shown when an assertion fails.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use freshet::subjects::{BUCKET_FEATURES, BUCKET_MODELS, Subjects};
use freshet::topology::{self, Topology};
use freshet_cli::stack::{find_nats_server, free_port};

const USERS: [&str; 7] = [
    "featurize",
    "train",
    "drift",
    "predict",
    "producer",
    "client",
    "admin",
];

/// nats-server with the infra users, on a loopback port; killed (by its pid) when dropped.
struct SecuredServer {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for SecuredServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
    let port = free_port()?;
    let config = dir.path().join("server.conf");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:{port}\njetstream {{ store_dir: \"{}\" }}\ninclude ./users.conf\n",
            dir.path().join("js").display()
        ),
    )?;
    let mut command = Command::new(find_nats_server()?);
    command
        .arg("-c")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for user in USERS {
        command.env(
            format!("FRESHET_{}_PASSWORD", user.to_uppercase()),
            password(user),
        );
    }
    let child = command.spawn()?;
    let server = SecuredServer {
        child,
        url: format!("nats://127.0.0.1:{port}"),
        _dir: dir,
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "nats-server did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(server)
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
