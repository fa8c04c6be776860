//! The integration-test harness: a real nats-server per test (free loopback port, its own store
//! folder, killed when the test ends), function binaries started as real processes against it,
//! and helpers to publish events and read what the pipeline produced.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use async_nats::jetstream::{self, consumer, message::PublishMessage};
use bytes::Bytes;
use freshet::serving::{PredictRequest, PredictResponse};
use freshet::store::DeclarationStore;
use freshet::subjects::Subjects;
use freshet::topology::{self, Topology};
use freshet_cli::stack::{FunctionProcess, NatsServer};
use freshet_model::store::PointerStore;
use futures::StreamExt;

pub use freshet_cli::stack;

pub mod links;

/// The built-in topology with a short ack wait, so redelivery after a crash takes seconds.
pub fn test_topology() -> String {
    include_str!("../../infra/topology.toml").replace("ack_wait = \"30s\"", "ack_wait = \"3s\"")
}

/// A message read back from a stream.
#[derive(Debug, Clone)]
pub struct Stored {
    pub subject: String,
    pub headers: Vec<(String, String)>,
    pub payload: Bytes,
    pub sequence: u64,
    /// When the server stored it.
    pub stored: std::time::SystemTime,
}

impl Stored {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).unwrap_or(serde_json::Value::Null)
    }
}

/// One test's freshet: a server, the functions it started, and a client.
pub struct Stack {
    pub dir: tempfile::TempDir,
    pub nats: NatsServer,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub subjects: Subjects,
    processes: Vec<FunctionProcess>,
    /// Another object store than the default folder: its URL and client environment.
    object_store: Option<(String, Vec<(String, String)>)>,
    /// More environment for the functions started from now on (see [`Stack::set_env`]).
    extra_env: Vec<(String, String)>,
}

impl Stack {
    /// Starts nats-server and provisions the test topology.
    pub async fn start() -> anyhow::Result<Stack> {
        Self::start_with_topology(test_topology()).await
    }

    /// The same, with EVENTS in `partitions` partitions instead of the topology's 4.
    pub async fn start_with_partitions(partitions: u32) -> anyhow::Result<Stack> {
        let topology = test_topology().replace(
            "\npartitions = 4\n",
            &format!("\npartitions = {partitions}\n"),
        );
        anyhow::ensure!(
            topology.contains(&format!("\npartitions = {partitions}\n")),
            "the built-in topology no longer says how many partitions EVENTS has"
        );
        Self::start_with_topology(topology).await
    }

    /// Starts nats-server and provisions `topology` (the text of a topology file).
    async fn start_with_topology(topology: String) -> anyhow::Result<Stack> {
        let mut dir = tempfile::tempdir()?;
        // FRESHET_KEEP_TEST_DIRS=1 keeps every stack's folder (logs, JetStream store) for a
        // post-mortem; its path is printed.
        if std::env::var_os("FRESHET_KEEP_TEST_DIRS").is_some() {
            dir.disable_cleanup(true);
            eprintln!("stack folder kept: {}", dir.path().display());
        }
        std::fs::write(dir.path().join("topology.toml"), topology)?;
        let nats = NatsServer::start(&dir.path().join("jetstream"))?;
        let client = async_nats::connect(nats.url()).await?;
        let js = jetstream::new(client.clone());
        let subjects = Subjects::default();
        let topology = Topology::from_file(&dir.path().join("topology.toml"))?;
        topology::provision(&js, &topology, &subjects).await?;
        Ok(Stack {
            dir,
            nats,
            client,
            js,
            subjects,
            processes: Vec::new(),
            object_store: None,
            extra_env: Vec::new(),
        })
    }

    pub fn artifacts_url(&self) -> String {
        match &self.object_store {
            Some((url, _)) => url.clone(),
            None => format!("file://{}", self.dir.path().join("artifacts").display()),
        }
    }

    /// Points the functions started from now on (and [`artifacts_url`](Self::artifacts_url)) at
    /// another object store, with the environment its client needs (S3 endpoint, keys).
    pub fn use_object_store(&mut self, url: &str, env: Vec<(String, String)>) {
        self.object_store = Some((url.to_string(), env));
    }

    /// Sets `name` to `value` in the environment of the functions started from now on.
    pub fn set_env(&mut self, name: &str, value: &str) {
        self.extra_env.retain(|(n, _)| n != name);
        self.extra_env.push((name.to_string(), value.to_string()));
    }

    /// A `freshet` CLI command against this stack (its server, store and topology); run it
    /// with [`run_cli`].
    pub fn freshet(&self) -> std::process::Command {
        let binary = stack::bin_dir()
            .map(|dir| dir.join("freshet"))
            .unwrap_or_else(|_| PathBuf::from("freshet"));
        let mut command = std::process::Command::new(binary);
        command.envs(self.env());
        command
    }

    /// The environment every function gets: this stack's server, store and topology, and what
    /// [`Stack::set_env`] added.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("FRESHET_NATS_URL".into(), self.nats.url()),
            ("FRESHET_OBJECT_STORE".into(), self.artifacts_url()),
            (
                "FRESHET_TOPOLOGY".into(),
                self.dir.path().join("topology.toml").display().to_string(),
            ),
            ("FRESHET_HTTP_PORT".into(), "0".into()),
            ("FRESHET_HTTP_ADDR".into(), "127.0.0.1".into()),
            ("FRESHET_LOG_FORMAT".into(), "text".into()),
            ("FRESHET_BATCH_WAIT".into(), "20ms".into()),
        ]
        .into_iter()
        .chain(self.object_store.iter().flat_map(|(_, env)| env.clone()))
        .chain(self.extra_env.iter().cloned())
        .collect()
    }

    /// Starts a function binary; returns its index for [`Stack::process`].
    pub fn spawn(&mut self, binary: &str, args: &[&str]) -> anyhow::Result<usize> {
        let log = self.log_path(binary, self.processes.len());
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        self.processes
            .push(FunctionProcess::spawn(binary, &args, &self.env(), &log)?);
        Ok(self.processes.len() - 1)
    }

    pub fn log_path(&self, binary: &str, index: usize) -> PathBuf {
        self.dir.path().join(format!("{binary}-{index}.log"))
    }

    /// The log a started function wrote so far, for failure messages.
    pub fn log_of(&self, binary: &str, index: usize) -> String {
        std::fs::read_to_string(self.log_path(binary, index)).unwrap_or_default()
    }

    /// Runs the `freshet` CLI with `args` against this stack; returns (exit code, stdout,
    /// stderr).
    pub fn run_cli(&self, args: &[&str]) -> (Option<i32>, String, String) {
        let output = std::process::Command::new(
            freshet_cli::stack::bin_dir()
                .expect("the binaries are built")
                .join("freshet"),
        )
        .args(args)
        .envs(self.env())
        .output()
        .expect("the freshet CLI runs");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    /// Declares `width` features (`x0`, `x1`, ...) under schema `model` `version` as the schema
    /// of `model`'s examples, as `freshet models declare` does; returns it.
    pub async fn declare(
        &self,
        model: &freshet::ids::ModelName,
        version: u32,
        width: usize,
    ) -> anyhow::Result<freshet::examples::FeatureSchema> {
        let schema = freshet::examples::FeatureSchema {
            name: model.to_string(),
            version,
            features: (0..width).map(|i| format!("x{i}")).collect(),
            monitoring: Vec::new(),
        };
        self.declarations()
            .await?
            .declare(model, &schema)
            .await
            .map_err(|e| anyhow::anyhow!("declaring the schema of {model}: {e}"))?;
        Ok(schema)
    }

    /// The schema declared for `model`'s examples, if any.
    pub async fn declared(
        &self,
        model: &freshet::ids::ModelName,
    ) -> anyhow::Result<Option<freshet::examples::FeatureSchema>> {
        Ok(self.declarations().await?.declared(model).await?.value)
    }

    async fn declarations(&self) -> anyhow::Result<freshet::store::Declarations> {
        let bucket = self
            .js
            .get_key_value(freshet::subjects::BUCKET_MODELS)
            .await?;
        Ok(freshet::store::Declarations::new(bucket))
    }

    /// Publishes the examples `range` of `model` as featurize would (deduplicated by id), with
    /// features and label from `row`.
    pub async fn publish_examples(
        &self,
        model: &freshet::ids::ModelName,
        range: std::ops::Range<u64>,
        row: impl Fn(u64) -> (Vec<f32>, f32),
    ) -> anyhow::Result<()> {
        // As an operator would before sending a model's examples: declare their schema, unless
        // one is declared already (a test that declares its own keeps it). The bookstore model's
        // is the one featurize declares.
        if let Some(width) = range.clone().next().map(|n| row(n).0.len())
            && self.declared(model).await?.is_none()
        {
            let bookstore = freshet_features::bookstore::schema();
            if model.as_str() == bookstore.name && width == bookstore.n_features() {
                self.declarations()
                    .await?
                    .declare(model, &bookstore)
                    .await
                    .map_err(|e| anyhow::anyhow!("declaring the schema of {model}: {e}"))?;
            } else {
                self.declare(model, 1, width).await?;
            }
        }
        for n in range {
            let (features, label) = row(n);
            let record = freshet::examples::ExampleRecord {
                id: format!("ex-{model}-{n}"),
                model: model.clone(),
                schema: None,
                features,
                label,
                source_event: n.to_string(),
                event_time: None,
                feedback: Default::default(),
                corrects: None,
                final_at: None,
            };
            let message = jetstream::message::PublishMessage::build()
                .payload(Bytes::from(record.to_json_bytes()))
                .message_id(&record.id);
            self.js
                .send_publish(self.subjects.examples(model), message)
                .await?
                .await?;
        }
        Ok(())
    }

    /// How many functions this stack started; the newest is `started() - 1`.
    pub fn started(&self) -> usize {
        self.processes.len()
    }

    pub fn process(&mut self, index: usize) -> &mut FunctionProcess {
        &mut self.processes[index]
    }

    /// Publishes a structured CloudEvent to the subject its content calls for.
    pub async fn publish_event(
        &self,
        event: &serde_json::Value,
    ) -> anyhow::Result<jetstream::publish::PublishAck> {
        let (subject, message) = event_message(&self.subjects, event)?;
        Ok(self.js.send_publish(subject, message).await?.await?)
    }

    /// Publishes a structured CloudEvent like [`Stack::publish_event`], with extra headers (a
    /// `traceparent`, say).
    pub async fn publish_event_with(
        &self,
        event: &serde_json::Value,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<()> {
        let (subject, message) = event_message(&self.subjects, event)?;
        let message = headers.iter().fold(message, |message, (name, value)| {
            message.header(*name, *value)
        });
        self.js.send_publish(subject, message).await?.await?;
        Ok(())
    }

    /// Publishes raw bytes to an event subject, valid or not.
    pub async fn publish_raw(
        &self,
        event_type: &str,
        entity: &str,
        payload: impl Into<Bytes>,
    ) -> anyhow::Result<()> {
        self.js
            .publish(self.subjects.event(event_type, entity), payload.into())
            .await?
            .await?;
        Ok(())
    }

    /// Every message of a stream (up to `limit`), read with an ephemeral consumer.
    pub async fn read_stream(&self, stream: &str, limit: usize) -> anyhow::Result<Vec<Stored>> {
        let stream_handle = self.js.get_stream(stream).await?;
        let consumer = stream_handle
            .create_consumer(consumer::pull::Config {
                ack_policy: consumer::AckPolicy::None,
                ..Default::default()
            })
            .await?;
        let mut out = Vec::new();
        while out.len() < limit {
            let mut batch = consumer
                .fetch()
                .max_messages(500.min(limit - out.len()))
                .messages()
                .await?;
            let before = out.len();
            while let Some(message) = batch.next().await {
                let message = message.map_err(|e| anyhow::anyhow!(e))?;
                let info = message.info().map_err(|e| anyhow::anyhow!(e))?;
                let (sequence, stored) = (info.stream_sequence, info.published.into());
                let headers = message
                    .headers
                    .iter()
                    .flat_map(|h| {
                        h.iter().map(|(k, v)| {
                            (
                                k.to_string(),
                                v.first().map(|v| v.to_string()).unwrap_or_default(),
                            )
                        })
                    })
                    .collect();
                out.push(Stored {
                    subject: message.subject.to_string(),
                    headers,
                    payload: message.payload.clone(),
                    sequence,
                    stored,
                });
            }
            if out.len() == before {
                break;
            }
        }
        Ok(out)
    }

    /// Waits until featurize holds the state of `items` items (a catalogue published first, so
    /// every later action finds its item's category).
    pub async fn await_items(&self, items: usize) -> anyhow::Result<()> {
        use futures::TryStreamExt;
        let features = self
            .js
            .get_key_value(freshet::subjects::BUCKET_FEATURES)
            .await?;
        eventually(
            Duration::from_secs(60),
            "the catalogue featurized",
            || async {
                let keys: Vec<String> = features.keys().await.ok()?.try_collect().await.ok()?;
                (keys.iter().filter(|k| k.starts_with("item.")).count() == items).then_some(())
            },
        )
        .await
    }

    /// Publishes a generated bookstore stream as a producer would: its first `items` events (the
    /// catalogue) one by one until featurize holds every item, then the rest in acknowledged
    /// chunks of 1,000, each event to its subject under its id.
    pub async fn publish_bookstore(
        &self,
        events: &[freshet::events::Event],
        items: usize,
    ) -> anyhow::Result<()> {
        let as_json = |event: &freshet::events::Event| -> anyhow::Result<serde_json::Value> {
            Ok(serde_json::from_slice(&event.to_json_bytes())?)
        };
        for event in &events[..items] {
            self.publish_event(&as_json(event)?).await?;
        }
        self.await_items(items).await?;
        for chunk in events[items..].chunks(1_000) {
            let mut acks = Vec::with_capacity(chunk.len());
            for event in chunk {
                let (subject, message) = event_message(&self.subjects, &as_json(event)?)?;
                acks.push(self.js.send_publish(subject, message).await?);
            }
            for ack in acks {
                ack.await?;
            }
        }
        Ok(())
    }

    /// Messages in a stream right now.
    pub async fn stream_len(&self, stream: &str) -> anyhow::Result<u64> {
        Ok(self.stream_state(stream).await?.messages)
    }

    /// The sequence of the newest message a stream has stored (it keeps counting after old
    /// messages age out, unlike [`stream_len`](Self::stream_len)).
    pub async fn last_sequence(&self, stream: &str) -> anyhow::Result<u64> {
        Ok(self.stream_state(stream).await?.last_sequence)
    }

    async fn stream_state(&self, stream: &str) -> anyhow::Result<jetstream::stream::State> {
        Ok(self.js.get_stream(stream).await?.get_info().await?.state)
    }

    /// Waits (up to `timeout`) until the predictor of `model` answers [`bookstore_row_request`].
    pub async fn await_serving(&self, model: &str, timeout: Duration) -> anyhow::Result<()> {
        eventually(
            timeout,
            &format!("the predictor of {model} to serve"),
            || async { self.predict(model, &bookstore_row_request()).await.ok() },
        )
        .await
        .map(|_| ())
    }

    /// Asks the predictor for `model` with `headers` (a `traceparent`, say); the raw reply.
    pub async fn predict_with_headers(
        &self,
        model: &str,
        request: &PredictRequest,
        headers: async_nats::HeaderMap,
    ) -> anyhow::Result<async_nats::Message> {
        let model = freshet::ids::ModelName::parse(model)?;
        let subject = freshet::serving::endpoint_single(&self.subjects, &model);
        let request = async_nats::Request::new()
            .payload(serde_json::to_vec(request)?.into())
            .headers(headers)
            .timeout(Some(Duration::from_secs(5)));
        Ok(self.client.send_request(subject, request).await?)
    }

    /// Asks the predictor; errors carry the service error header text.
    pub async fn predict(
        &self,
        model: &str,
        request: &PredictRequest,
    ) -> anyhow::Result<PredictResponse> {
        let model = freshet::ids::ModelName::parse(model)?;
        let subject = freshet::serving::endpoint_single(&self.subjects, &model);
        Ok(freshet::serving::call(&self.client, subject, request, Duration::from_secs(5)).await?)
    }
}

/// A prediction request with a ready bookstore-width feature row (0.0, 0.1, 0.2, ...).
pub fn bookstore_row_request() -> freshet::serving::PredictRequest {
    freshet::serving::PredictRequest {
        features: Some(
            (0..freshet_features::bookstore::FEATURE_NAMES.len())
                .map(|i| 0.1 * i as f64)
                .collect(),
        ),
        ..Default::default()
    }
}

/// The Open Inference Protocol body of [`bookstore_row_request`]'s row.
pub fn bookstore_row_infer() -> serde_json::Value {
    let row = bookstore_row_request().features.unwrap_or_default();
    serde_json::json!({"inputs": [{"name": "features", "shape": [1, row.len()], "datatype": "FP64", "data": row}]})
}

/// POSTs `body` to the Open Inference Protocol endpoint of `model`'s predictor serving HTTP on
/// loopback `port`, with a `traceparent` header if one is given.
pub async fn infer(
    port: u16,
    model: &str,
    body: &serde_json::Value,
    traceparent: Option<&str>,
) -> anyhow::Result<reqwest::Response> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let mut request = http
        .post(format!("http://127.0.0.1:{port}/v2/models/{model}/infer"))
        .json(body);
    if let Some(traceparent) = traceparent {
        request = request.header(freshet::trace::TRACEPARENT, traceparent);
    }
    Ok(request.send().await?)
}

/// A `user_action` CloudEvent: `user` views `item`.
pub fn view_action(id: &str, user: &str, item: &str) -> serde_json::Value {
    cloud_event(
        id,
        "user_action",
        serde_json::json!({"user": user, "item": item, "action": "view"}),
    )
}

/// Polls `check` every 50 ms until it returns `Some`, or fails after `timeout` with `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A CloudEvent as JSON, for tests.
pub fn cloud_event(id: &str, event_type: &str, data: serde_json::Value) -> serde_json::Value {
    serde_json::json!({"specversion": "1.0", "id": id, "source": "tests", "type": event_type,
        "time": "2026-11-26T12:00:00Z", "data": data})
}

/// A small bookstore: `items` new_item events then `actions` user actions with a learnable
/// pattern (users buy cheap books more often).
pub fn bookstore_events(items: usize, actions: usize, id_prefix: &str) -> Vec<serde_json::Value> {
    let mut events = Vec::new();
    for i in 0..items {
        events.push(cloud_event(&format!("{id_prefix}-item-{i}"), "new_item",
            serde_json::json!({"item": format!("b{i}"), "category": format!("c{}", i % 3), "price": 5.0 + (i * 7 % 50) as f64})));
    }
    events.extend((0..actions).map(|n| bookstore_action(n, items, id_prefix)));
    events
}

/// User action `n` of [`bookstore_events`], on its own (for replays too long to hold in memory).
pub fn bookstore_action(n: usize, items: usize, id_prefix: &str) -> serde_json::Value {
    let item = (n * 7 + n / 3) % items;
    let cheap = (5 + item * 7 % 50) < 25;
    let action = if cheap && n.is_multiple_of(3) {
        "purchase"
    } else if n.is_multiple_of(5) {
        "add_to_cart"
    } else {
        "view"
    };
    cloud_event(
        &format!("{id_prefix}-act-{n}"),
        "user_action",
        serde_json::json!({"user": format!("u{}", n % 17), "item": format!("b{item}"), "action": action}),
    )
}

/// The project's Python (`.tools/venv/bin/python`, with nats-py), for tests that check what
/// a Python client sees.
pub fn tools_python() -> anyhow::Result<PathBuf> {
    std::env::current_dir()?
        .ancestors()
        .map(|dir| dir.join(".tools/venv/bin/python"))
        .find(|path| path.is_file())
        .context("the tools' Python not found: run tools/install.sh (make tools)")
}

/// Every message of `stream` as nats-py 2.11 reads it: one map of header names to values per
/// message, in stream order (`{}` for a message whose headers it could not read).
pub fn headers_seen_by_nats_py(
    url: &str,
    stream: &str,
    count: usize,
) -> anyhow::Result<Vec<serde_json::Value>> {
    const READ: &str = r#"
import asyncio, json, sys
import nats

async def main(url, stream, count):
    nc = await nats.connect(url)
    sub = await nc.jetstream().pull_subscribe(">", stream=stream)
    seen = []
    while len(seen) < count:
        seen += [dict(m.headers or {}) for m in await sub.fetch(count - len(seen), timeout=5)]
    print(json.dumps(seen))
    await nc.close()

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"#;
    let output = std::process::Command::new(tools_python()?)
        .args(["-c", READ, url, stream, &count.to_string()])
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "nats-py could not read {stream}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(serde_json::from_slice(&output.stdout)?)
}

/// moto, an S3-compatible server, on a free loopback port; stopped when dropped. It keeps
/// objects in memory and accepts any credentials.
pub struct S3Server {
    child: std::process::Child,
    pub endpoint: String,
}

impl S3Server {
    pub fn start() -> anyhow::Result<S3Server> {
        let binary = std::env::current_dir()?
            .ancestors()
            .map(|dir| dir.join(".tools/venv/bin/moto_server"))
            .find(|path| path.is_file())
            .context("moto_server not found: run tools/install.sh (make tools)")?;
        let port = stack::free_port()?;
        let child = std::process::Command::new(binary)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let server = S3Server {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if std::time::Instant::now() > deadline {
                bail!("moto_server did not listen on port {port} within 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(server)
    }

    /// Freezes the server (SIGSTOP): connections open, nothing answered, as an unreachable
    /// store looks to a client. [`resume`](Self::resume) undoes it.
    pub fn pause(&self) {
        stack::signal(&self.child, libc::SIGSTOP);
    }

    pub fn resume(&self) {
        stack::signal(&self.child, libc::SIGCONT);
    }

    /// The environment an S3 client needs to reach this server.
    pub fn client_env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_REGION", "us-east-1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// Creates a bucket (S3 CreateBucket is a PUT on the bucket's path).
    pub async fn create_bucket(&self, bucket: &str) -> anyhow::Result<()> {
        let response = reqwest::Client::new()
            .put(format!("{}/{bucket}", self.endpoint))
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("creating bucket {bucket}: HTTP {}", response.status());
        }
        Ok(())
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes model versions and moves pointers the way train does, so predictor tests control
/// exactly which versions exist and when they go live.
pub struct ModelWriter {
    pub model: freshet::ids::ModelName,
    pub artifacts: freshet_model::store::ArtifactStore,
    pub pointers: freshet_model::store::Pointers,
    /// The MODELS bucket itself, written as a writer that verifies nothing would.
    models: async_nats::jetstream::kv::Store,
    trainer: freshet_model::Trainer,
}

impl ModelWriter {
    /// Writes logistic-regression versions.
    pub async fn new(stack: &Stack, model: &str) -> anyhow::Result<ModelWriter> {
        ModelWriter::with_config(stack, model, freshet_model::ModelConfig::default()).await
    }

    /// Writes versions of the model `config` describes (an mlp of some width, say).
    pub async fn with_config(
        stack: &Stack,
        model: &str,
        config: freshet_model::ModelConfig,
    ) -> anyhow::Result<ModelWriter> {
        let models = stack
            .js
            .get_key_value(freshet::subjects::BUCKET_MODELS)
            .await?;
        Ok(ModelWriter {
            model: freshet::ids::ModelName::parse(model)?,
            artifacts: freshet_model::store::ArtifactStore::from_url(&stack.artifacts_url())?,
            pointers: freshet_model::store::Pointers::new(models.clone()),
            models,
            trainer: freshet_model::Trainer::new(
                &config,
                freshet_features::bookstore::FEATURE_NAMES.len(),
            )?,
        })
    }

    /// Trains one more batch and stores the result as `version`; returns its manifest.
    pub async fn write_version(&mut self, version: u64) -> anyhow::Result<freshet_model::Manifest> {
        let rows: Vec<Vec<f32>> = (0..16)
            .map(|i| {
                (0..freshet_features::bookstore::FEATURE_NAMES.len())
                    .map(|j| ((i * 7 + j + version as usize) % 5) as f32)
                    .collect()
            })
            .collect();
        let labels: Vec<f32> = (0..16).map(|i| (i % 2) as f32).collect();
        self.trainer.train_batch(&rows, &labels)?;
        let bytes = self.trainer.to_bytes()?;
        let manifest = freshet_model::Manifest {
            model: self.model.to_string(),
            version,
            parent: version.checked_sub(1).filter(|v| *v > 0),
            config: *self.trainer.config(),
            schema: freshet_features::bookstore::schema(),
            sha256: freshet_model::sha256_hex(&bytes),
            size_bytes: bytes.len() as u64,
            created_at: chrono::Utc::now(),
            step: self.trainer.step(),
            learned: Some(freshet_model::SequenceRange {
                first: version,
                last: version,
            }),
            high_water_mark: version,
            lineage: None,
            traces: Vec::new(),
            metrics: freshet_model::TrainingMetrics::at_chance(16 * version, 16),
        };
        self.artifacts.put_version(&manifest, &bytes).await?;
        Ok(manifest)
    }

    /// Points `slot` at a version (by its manifest's version and checksum), by compare-and-set,
    /// as a writer that verifies nothing would: a test may point at a damaged or missing version
    /// on purpose, to see predictors refuse it.
    pub async fn point(
        &self,
        slot: freshet_model::store::Slot,
        version: u64,
        sha256: &str,
    ) -> anyhow::Result<()> {
        let current = self.pointers.get(&self.model, slot).await?;
        let pointer = freshet_model::store::Pointer {
            version,
            sha256: sha256.to_string(),
            updated_at: chrono::Utc::now(),
            cause: freshet_model::store::Cause::Operator,
            reason: "test".into(),
        };
        self.models
            .update(
                slot.key(&self.model),
                Bytes::from(serde_json::to_vec(&pointer)?),
                current.revision,
            )
            .await?;
        Ok(())
    }

    /// Removes a pointer (a candidate withdrawn).
    pub async fn withdraw(&self, slot: freshet_model::store::Slot) -> anyhow::Result<()> {
        self.models.delete(slot.key(&self.model)).await?;
        Ok(())
    }
}

/// The subject a structured CloudEvent belongs on, and the message to publish there (its id as
/// `Nats-Msg-Id`, so a retried publish is stored once).
pub fn event_message(
    subjects: &Subjects,
    event: &serde_json::Value,
) -> anyhow::Result<(String, PublishMessage)> {
    let bytes = serde_json::to_vec(event)?;
    let decoded = freshet::events::decode(&bytes, usize::MAX)
        .map_err(|r| anyhow::anyhow!("test event is invalid: {r}"))?;
    let subject = subjects.event(
        decoded.data.event_type().as_str(),
        decoded.data.partition_key(),
    );
    let message = PublishMessage::build()
        .payload(Bytes::from(bytes))
        .message_id(&decoded.id);
    Ok((subject, message))
}

/// A nats-server started from a configuration the test writes (users, TLS, ...), on a free
/// loopback port; killed, by its pid, when dropped.
pub struct ConfiguredServer {
    child: std::process::Child,
    pub port: u16,
}

impl ConfiguredServer {
    /// Writes `config(port)` to `dir/server.conf` and starts nats-server with it and `envs` in
    /// its environment; returns once the port takes connections.
    pub fn start(
        dir: &std::path::Path,
        config: impl FnOnce(u16) -> String,
        envs: &[(String, String)],
    ) -> anyhow::Result<ConfiguredServer> {
        let port = stack::free_port()?;
        let path = dir.join("server.conf");
        std::fs::write(&path, config(port))?;
        let child = std::process::Command::new(stack::find_nats_server()?)
            .arg("-c")
            .arg(&path)
            .envs(envs.iter().map(|(k, v)| (k, v)))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let server = ConfiguredServer { child, port };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "nats-server did not start with {}",
                path.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(server)
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ConfiguredServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the function binary `function` with `args`, the settings `envs`, HTTP on a free
/// loopback port and text logs; its log goes to `dir/<function>.log` (see [`function_log`]). It is
/// started again if it exits having lost its lease, as a deployment restarts it.
pub fn spawn_function(
    function: &str,
    args: &[&str],
    envs: &[(&str, String)],
    dir: &std::path::Path,
) -> anyhow::Result<FunctionProcess> {
    let defaults = [
        ("FRESHET_HTTP_PORT", "0".to_string()),
        ("FRESHET_HTTP_ADDR", "127.0.0.1".to_string()),
        ("FRESHET_LOG_FORMAT", "text".to_string()),
    ];
    let envs: Vec<(String, String)> = envs
        .iter()
        .cloned()
        .chain(defaults)
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    FunctionProcess::spawn_restarting(function, &args, &envs, &dir.join(format!("{function}.log")))
}

/// The log a function started by [`spawn_function`] in `dir` wrote so far.
pub fn function_log(dir: &std::path::Path, function: &str) -> String {
    std::fs::read_to_string(dir.join(format!("{function}.log"))).unwrap_or_default()
}

/// The manifest of `model`'s live version if it has learned the examples up to `sequence`.
pub async fn live_through(
    pointers: &freshet_model::store::Pointers,
    artifacts: &freshet_model::store::ArtifactStore,
    model: &freshet::ids::ModelName,
    sequence: u64,
) -> Option<freshet_model::Manifest> {
    let pointer = pointers
        .get(model, freshet_model::store::Slot::Live)
        .await
        .ok()?
        .value?;
    let manifest = artifacts.manifest(model, pointer.version).await.ok()?;
    (manifest.high_water_mark >= sequence).then_some(manifest)
}

/// Checks that the lineage ending at `live` learned every example of 1..=`total` exactly once:
/// its versions' learned ranges tile that span with no gap and no overlap, and the live
/// version counts `total` examples.
pub async fn assert_lineage_tiles(
    artifacts: &freshet_model::store::ArtifactStore,
    model: &freshet::ids::ModelName,
    live: &freshet_model::Manifest,
    total: u64,
) -> anyhow::Result<()> {
    let sequences: Vec<u64> = (1..=total).collect();
    assert_lineage_learned(artifacts, model, live, &sequences).await
}

/// Checks that the lineage ending at `live` learned exactly once each of the model's examples,
/// whose EXAMPLES sequences are `sequences` (ascending; other models' examples lie between
/// them): its versions' learned ranges follow one another along `sequences` with no gap and no
/// overlap, from the first to the last, and the live version counts them all.
pub async fn assert_lineage_learned(
    artifacts: &freshet_model::store::ArtifactStore,
    model: &freshet::ids::ModelName,
    live: &freshet_model::Manifest,
    sequences: &[u64],
) -> anyhow::Result<()> {
    let mut ranges = Vec::new();
    let mut manifest = live.clone();
    loop {
        ranges.push(manifest.learned.context("a version that learned nothing")?);
        match manifest.parent {
            Some(parent) => manifest = artifacts.manifest(model, parent).await?,
            None => break,
        }
    }
    ranges.reverse();
    let total = sequences.len() as u64;
    anyhow::ensure!(
        live.metrics.examples_total == total,
        "the live version counts {} examples, not {total}; lineage {ranges:?}",
        live.metrics.examples_total
    );
    anyhow::ensure!(
        ranges.first().map(|r| r.first) == sequences.first().copied()
            && ranges.last().map(|r| r.last) == sequences.last().copied(),
        "the lineage does not span {:?}..={:?}: {ranges:?}",
        sequences.first(),
        sequences.last()
    );
    let position = |sequence: u64| sequences.binary_search(&sequence).ok();
    for pair in ranges.windows(2) {
        let follows = match (position(pair[0].last), position(pair[1].first)) {
            (Some(last), Some(first)) => first == last + 1,
            _ => false,
        };
        anyhow::ensure!(
            follows,
            "a gap or an overlap between {:?} and {:?}",
            pair[0],
            pair[1]
        );
    }
    Ok(())
}

/// A process a test started, killed (by its own handle) when dropped.
pub struct Started(pub std::process::Child);

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `freshet view --port 0 --window 10m` against the stack (its log in `view.log` of the
/// stack's folder); returns it and the URL it printed.
pub fn start_view(stack: &Stack) -> anyhow::Result<(Started, String)> {
    start_view_with(stack, &[])
}

/// Like [`start_view`], with more arguments for `freshet view`.
pub fn start_view_with(stack: &Stack, args: &[&str]) -> anyhow::Result<(Started, String)> {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let mut child = Command::new(freshet_cli::stack::bin_dir()?.join("freshet"))
        .args(["view", "--port", "0", "--window", "10m"])
        .args(args)
        .envs(stack.env())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(stack.dir.path().join("view.log"))?)
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .context("the view's standard output is piped")?;
    let started = Started(child);
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if let Some(Ok(line)) = BufReader::new(stdout).lines().next() {
            let _ = sender.send(line);
        }
    });
    let line = receiver
        .recv_timeout(Duration::from_secs(30))
        .map_err(|_| anyhow::anyhow!("freshet view printed no URL within 30 s"))?;
    let url = line
        .strip_prefix("live view on ")
        .ok_or_else(|| anyhow::anyhow!("unexpected first line: {line}"))?
        .to_string();
    Ok((started, url))
}

/// What the view at `url` serves on `GET /api/state`; `None` until it answers.
pub async fn view_state(url: &str) -> Option<serde_json::Value> {
    reqwest::get(format!("{url}api/state"))
        .await
        .ok()?
        .json()
        .await
        .ok()
}

/// A certificate authority made for one test: certificates are generated at test time, and no
/// private key is ever committed.
pub struct Authority {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl Authority {
    pub fn new(name: &str) -> Authority {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let mut params =
            CertificateParams::new(Vec::<String>::new()).expect("no names are valid names");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("a key pair can be generated");
        let cert = params.self_signed(&key).expect("a CA can sign itself");
        Authority { cert, key }
    }

    /// Writes `<name>.pem` and `<name>-key.pem` in `dir` for a certificate this CA signs, for
    /// `localhost` and 127.0.0.1, with `name` as its common name.
    pub fn issue(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        use rcgen::{CertificateParams, DnType, KeyPair, SanType};
        let mut params = CertificateParams::new(vec!["localhost".to_string()])
            .expect("localhost is a valid name");
        params
            .subject_alt_names
            .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("a key pair can be generated");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("the CA signs");
        let (cert_path, key_path) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}-key.pem")),
        );
        std::fs::write(&cert_path, cert.pem()).expect("the test folder is writable");
        std::fs::write(&key_path, key.serialize_pem()).expect("the test folder is writable");
        (cert_path, key_path)
    }

    /// Writes the CA's certificate to `path`.
    pub fn write(&self, path: &Path) -> PathBuf {
        std::fs::write(path, self.cert.pem()).expect("the test folder is writable");
        path.to_path_buf()
    }
}

/// Writes `tokens` to `path`, one per line, for `--http-tokens` (a running function re-reads it).
pub fn write_tokens(path: &Path, tokens: &[&str]) -> PathBuf {
    let mut text = String::from("# callers of this test\n");
    for token in tokens {
        text.push_str(token);
        text.push('\n');
    }
    std::fs::write(path, text).expect("the test folder is writable");
    path.to_path_buf()
}

/// An HTTP client that sends `token` as its bearer credential with every request.
pub fn http_client_with_token(token: &str) -> reqwest::Client {
    client_builder(Some(token))
        .expect("a test token is a valid header value")
        .build()
        .expect("the HTTP client builds")
}

/// An HTTPS client that trusts only the CA at `ca`, presenting the certificate and key of
/// `identity`, and sending `token` as its bearer credential, when given.
pub fn https_client(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
    token: Option<&str>,
) -> anyhow::Result<reqwest::Client> {
    let mut builder = client_builder(token)?
        .tls_certs_only([reqwest::Certificate::from_pem(&std::fs::read(ca)?)?]);
    if let Some((cert, key)) = identity {
        let pem = [std::fs::read(cert)?, std::fs::read(key)?].concat();
        builder = builder.identity(reqwest::Identity::from_pem(&pem)?);
    }
    Ok(builder.build()?)
}

fn client_builder(token: Option<&str>) -> anyhow::Result<reqwest::ClientBuilder> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = token {
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {token}").parse()?,
        );
    }
    Ok(reqwest::Client::builder()
        .default_headers(headers)
        .timeout(Duration::from_secs(10)))
}

/// What one run of a CLI command gave.
#[derive(Debug, Clone)]
pub struct CliRun {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `command` to its end (see [`Stack::freshet`]); panics if it cannot be started.
pub fn run_cli(command: &mut std::process::Command) -> CliRun {
    let output = command
        .output()
        .unwrap_or_else(|err| panic!("cannot run {command:?}: {err}"));
    CliRun {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}
