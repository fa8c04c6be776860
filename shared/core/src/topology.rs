//! The JetStream topology (streams, KV buckets, durable consumers) and its idempotent provisioning.
//!
//! Settings come from a TOML file (`infra/topology.toml` is built in). Provisioning creates what is
//! missing, leaves what matches alone, and refuses to touch an existing stream, bucket or consumer
//! whose *structure* differs (subjects, partitioning, retention, storage, replicas): changing
//! those under running functions is a decision for an operator, not a side effect of a restart.
//!
//! A stream's *limits* are different: how long it keeps messages (`max_age`), how many bytes
//! (`max_bytes`) and how long it remembers message ids (`duplicate_window`) size and time what it
//! holds without changing what it is, and JetStream edits them in place. `freshet provision` (the
//! operator's command, [`provision`]) updates them to the topology's values; a function starting
//! against a stream whose limits differ logs the difference and runs on, so an upgrade that
//! changes a default (as the duplicate window's did, from 2 to 10 minutes) never stops a
//! deployment, and two releases rolling out side by side never undo each other's edit.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, stream};
use serde::Deserialize;

use crate::subjects::{
    BUCKET_DRIFT, BUCKET_FEATURES, BUCKET_LEASES, BUCKET_MODELS, STREAM_CONTROL,
    STREAM_DEAD_LETTER, STREAM_EVENTS, STREAM_EXAMPLES, STREAM_PREDICTIONS, Subjects,
};

const BUILTIN: &str = include_str!("../../../infra/topology.toml");

/// The streams whose duplicate window is the retry contract of their writers
/// ([`Topology::with_duplicate_window`]).
pub const DEDUPLICATED_STREAMS: [&str; 2] = [STREAM_EVENTS, STREAM_EXAMPLES];

/// Limits of one stream.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamLimits {
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    pub max_bytes: i64,
    #[serde(with = "humantime_serde")]
    pub duplicate_window: Duration,
}

/// Settings of one KV bucket.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BucketSettings {
    pub history: i64,
    /// How long an entry lives without being written again (leases); forever when unset.
    #[serde(default, with = "humantime_serde::option")]
    pub max_age: Option<Duration>,
}

/// Defaults for every durable consumer.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerDefaults {
    #[serde(with = "humantime_serde")]
    pub ack_wait: Duration,
}

/// The whole topology, as read from the TOML file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    pub partitions: u32,
    pub replicas: usize,
    pub streams: BTreeMap<String, StreamLimits>,
    pub buckets: BTreeMap<String, BucketSettings>,
    pub consumers: ConsumerDefaults,
}

/// Why the topology could not be read or provisioned.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("cannot read topology file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("topology file {path} is invalid: {source}")]
    Parse {
        path: String,
        source: Box<toml::de::Error>,
    },
    #[error("topology is invalid: {0}")]
    Invalid(String),
    #[error(
        "{kind} {name} exists with different settings: {differences}. freshet will not change it; \
         update or delete it on purpose (for example with the nats CLI), or fix the topology file"
    )]
    Conflict {
        kind: &'static str,
        name: String,
        differences: Differences,
    },
    #[error(
        "{kind} {name} does not exist, and this process only verifies the topology \
         (--provision verify): run `freshet provision` as an operator first"
    )]
    Missing { kind: &'static str, name: String },
    #[error("JetStream request for {what} failed: {source}")]
    JetStream {
        what: String,
        source: async_nats::Error,
    },
}

/// The fields that differ between what exists and what the topology wants.
#[derive(Debug, Default)]
pub struct Differences(Vec<String>);

impl Differences {
    fn check<T: PartialEq + fmt::Debug>(&mut self, field: &str, existing: T, wanted: T) {
        if existing != wanted {
            self.0.push(format!(
                "{field} is {existing:?}, the topology wants {wanted:?}"
            ));
        }
    }

    fn into_result(self, kind: &'static str, name: &str) -> Result<(), TopologyError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(TopologyError::Conflict {
                kind,
                name: name.to_string(),
                differences: self,
            })
        }
    }
}

impl fmt::Display for Differences {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("; "))
    }
}

/// What provisioning did to one stream, bucket or consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Provisioned {
    Created,
    Unchanged,
    /// A stream's limits were updated in place to the topology's (by `freshet provision`).
    Updated(String),
    /// A stream's limits differ from the topology's and were left as they are (a function
    /// starting): what differs.
    LimitsDiffer(String),
}

impl Topology {
    /// The topology built into the binaries (a copy of `infra/topology.toml`).
    pub fn builtin() -> Topology {
        Topology::parse(BUILTIN, "infra/topology.toml")
            .expect("the built-in topology file is valid; a unit test checks it")
    }

    pub fn from_file(path: &Path) -> Result<Topology, TopologyError> {
        let text = std::fs::read_to_string(path).map_err(|source| TopologyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Topology::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, origin: &str) -> Result<Topology, TopologyError> {
        let topology: Topology = toml::from_str(text).map_err(|source| TopologyError::Parse {
            path: origin.to_string(),
            source: Box::new(source),
        })?;
        topology.validate()?;
        Ok(topology)
    }

    fn validate(&self) -> Result<(), TopologyError> {
        if !(1..=1024).contains(&self.partitions) {
            return Err(TopologyError::Invalid(format!(
                "partitions is {}, use 1 to 1024",
                self.partitions
            )));
        }
        if !(1..=5).contains(&self.replicas) {
            return Err(TopologyError::Invalid(format!(
                "replicas is {}, use 1 to 5",
                self.replicas
            )));
        }
        for name in [
            STREAM_EVENTS,
            STREAM_EXAMPLES,
            STREAM_PREDICTIONS,
            STREAM_CONTROL,
            STREAM_DEAD_LETTER,
        ] {
            if !self.streams.contains_key(name) {
                return Err(TopologyError::Invalid(format!("stream {name} is missing")));
            }
        }
        for name in [BUCKET_FEATURES, BUCKET_MODELS, BUCKET_LEASES, BUCKET_DRIFT] {
            match self.buckets.get(name) {
                None => return Err(TopologyError::Invalid(format!("bucket {name} is missing"))),
                Some(b) if !(1..=64).contains(&b.history) => {
                    return Err(TopologyError::Invalid(format!(
                        "bucket {name}: history must be 1 to 64"
                    )));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// The same topology with `window` as the duplicate window of the streams whose writers
    /// retry: EVENTS (producers) and EXAMPLES (featurize re-publishing after a crash, train's
    /// `POST /events`). A message re-sent inside the window under the same `Nats-Msg-Id` is
    /// stored once; the server keeps every id for the window (about 200 bytes each).
    pub fn with_duplicate_window(mut self, window: Duration) -> Topology {
        for name in DEDUPLICATED_STREAMS {
            if let Some(limits) = self.streams.get_mut(name) {
                limits.duplicate_window = window;
            }
        }
        self
    }

    /// The stream configurations this topology asks for.
    pub fn stream_configs(&self, subjects: &Subjects) -> Vec<stream::Config> {
        let subjects_of = |name: &str| match name {
            STREAM_EVENTS => vec![subjects.events_ingest()],
            STREAM_EXAMPLES => vec![subjects.examples_all()],
            STREAM_PREDICTIONS => vec![subjects.predictions_all()],
            STREAM_CONTROL => vec![subjects.control_all()],
            STREAM_DEAD_LETTER => vec![subjects.dead_letter_all()],
            _ => Vec::new(),
        };
        self.streams
            .iter()
            .map(|(name, limits)| stream::Config {
                name: name.clone(),
                subjects: subjects_of(name),
                subject_transform: (name == STREAM_EVENTS).then(|| stream::SubjectTransform {
                    source: subjects.events_ingest(),
                    destination: subjects.events_partitioned_template(self.partitions),
                }),
                storage: stream::StorageType::File,
                retention: stream::RetentionPolicy::Limits,
                max_age: limits.max_age,
                max_bytes: limits.max_bytes,
                duplicate_window: limits.duplicate_window,
                num_replicas: self.replicas,
                allow_direct: true,
                ..Default::default()
            })
            .collect()
    }

    /// The KV bucket configurations this topology asks for.
    pub fn bucket_configs(&self) -> Vec<kv::Config> {
        self.buckets
            .iter()
            .map(|(name, settings)| kv::Config {
                bucket: name.clone(),
                history: settings.history,
                max_age: settings.max_age.unwrap_or_default(),
                num_replicas: self.replicas,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .collect()
    }

    /// A durable pull consumer on `filter_subjects` with this topology's defaults.
    ///
    /// `max_ack_pending` is what the function holds unacknowledged at most. Keeping it at exactly
    /// that is what keeps a partition in order across a crash: the dead replica's unacknowledged
    /// messages fill the allowance, so nothing newer is delivered before they are redelivered.
    pub fn consumer_config(
        &self,
        durable: &str,
        filter_subjects: Vec<String>,
        max_ack_pending: usize,
    ) -> consumer::pull::Config {
        consumer::pull::Config {
            durable_name: Some(durable.to_string()),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: self.consumers.ack_wait,
            max_ack_pending: i64::try_from(max_ack_pending.max(1)).unwrap_or(i64::MAX),
            filter_subjects,
            num_replicas: self.replicas,
            ..Default::default()
        }
    }
}

fn js_error(what: impl Into<String>, source: impl Into<async_nats::Error>) -> TopologyError {
    TopologyError::JetStream {
        what: what.into(),
        source: source.into(),
    }
}

/// The operator's provisioning (`freshet provision`): creates every stream and bucket that is
/// missing, checks the structure of the ones that exist, and updates a stream's limits in place
/// where they differ from the topology's.
pub async fn provision(
    js: &jetstream::Context,
    topology: &Topology,
    subjects: &Subjects,
) -> Result<Vec<(String, Provisioned)>, TopologyError> {
    provision_with(
        js,
        topology,
        subjects,
        ProvisionMode::Create,
        Limits::Update,
    )
    .await
}

/// What to do with a stream whose limits differ from the topology's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Limits {
    /// Update them in place: the operator asked for the topology.
    Update,
    /// Leave them and report the difference: a function starting.
    Keep,
}

/// Whether a process creates what is missing from the topology or only checks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProvisionMode {
    /// Create missing streams and buckets (needs the rights to create them).
    #[default]
    Create,
    /// Check that every stream and bucket exists with the wanted settings, and fail with a
    /// clear error if one is missing: for functions running with least privilege, whose users
    /// may read stream settings but not create streams.
    Verify,
}

impl std::str::FromStr for ProvisionMode {
    type Err = String;

    fn from_str(text: &str) -> Result<ProvisionMode, String> {
        match text {
            "create" => Ok(ProvisionMode::Create),
            "verify" => Ok(ProvisionMode::Verify),
            other => Err(format!("{other:?} is not create or verify")),
        }
    }
}

/// A function's provisioning at start-up: creates what is missing ([`ProvisionMode::Create`]) or
/// only checks it ([`ProvisionMode::Verify`]); a stream whose limits differ is left as it is and
/// reported as [`Provisioned::LimitsDiffer`].
pub async fn provision_as(
    js: &jetstream::Context,
    topology: &Topology,
    subjects: &Subjects,
    mode: ProvisionMode,
) -> Result<Vec<(String, Provisioned)>, TopologyError> {
    provision_with(js, topology, subjects, mode, Limits::Keep).await
}

async fn provision_with(
    js: &jetstream::Context,
    topology: &Topology,
    subjects: &Subjects,
    mode: ProvisionMode,
    limits: Limits,
) -> Result<Vec<(String, Provisioned)>, TopologyError> {
    let mut report = Vec::new();
    for wanted in topology.stream_configs(subjects) {
        let outcome = ensure_stream(js, &wanted, mode, limits).await?;
        report.push((format!("stream {}", wanted.name), outcome));
    }
    for wanted in topology.bucket_configs() {
        let outcome = ensure_bucket(js, &wanted, mode).await?;
        report.push((format!("bucket {}", wanted.bucket), outcome));
    }
    Ok(report)
}

async fn existing_stream(
    js: &jetstream::Context,
    name: &str,
) -> Result<Option<stream::Info>, TopologyError> {
    match js.get_stream(name).await {
        Ok(mut handle) => Ok(Some(
            handle
                .info()
                .await
                .map_err(|e| js_error(format!("stream {name} info"), e))?
                .clone(),
        )),
        Err(err) => match err.kind() {
            jetstream::context::GetStreamErrorKind::JetStream(e)
                if e.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
            {
                Ok(None)
            }
            _ => Err(js_error(format!("stream {name}"), err)),
        },
    }
}

async fn ensure_stream(
    js: &jetstream::Context,
    wanted: &stream::Config,
    mode: ProvisionMode,
    limits: Limits,
) -> Result<Provisioned, TopologyError> {
    let Some(info) = existing_stream(js, &wanted.name).await? else {
        if mode == ProvisionMode::Verify {
            return Err(TopologyError::Missing {
                kind: "stream",
                name: wanted.name.clone(),
            });
        }
        js.create_stream(wanted.clone())
            .await
            .map_err(|e| js_error(format!("create stream {}", wanted.name), e))?;
        return Ok(Provisioned::Created);
    };
    let existing = &info.config;
    let mut diff = Differences::default();
    diff.check("subjects", &existing.subjects, &wanted.subjects);
    diff.check(
        "subject_transform",
        existing
            .subject_transform
            .as_ref()
            .map(|t| (&t.source, &t.destination)),
        wanted
            .subject_transform
            .as_ref()
            .map(|t| (&t.source, &t.destination)),
    );
    diff.check("retention", existing.retention, wanted.retention);
    diff.check("storage", existing.storage, wanted.storage);
    diff.check("num_replicas", existing.num_replicas, wanted.num_replicas);
    diff.into_result("stream", &wanted.name)?;

    let mut limit_diff = Differences::default();
    limit_diff.check("max_age", existing.max_age, wanted.max_age);
    limit_diff.check("max_bytes", existing.max_bytes, wanted.max_bytes);
    limit_diff.check(
        "duplicate_window",
        existing.duplicate_window,
        wanted.duplicate_window,
    );
    if limit_diff.0.is_empty() {
        return Ok(Provisioned::Unchanged);
    }
    let differences = limit_diff.to_string();
    if limits == Limits::Keep || mode == ProvisionMode::Verify {
        tracing::warn!(stream = %wanted.name, %differences,
            "the stream's limits differ from the topology; running on them (`freshet provision` updates them)");
        return Ok(Provisioned::LimitsDiffer(differences));
    }
    // Only the limits change; everything else stays as the server has it.
    let updated = stream::Config {
        max_age: wanted.max_age,
        max_bytes: wanted.max_bytes,
        duplicate_window: wanted.duplicate_window,
        ..existing.clone()
    };
    js.update_stream(&updated)
        .await
        .map_err(|e| js_error(format!("update stream {}", wanted.name), e))?;
    Ok(Provisioned::Updated(differences))
}

async fn ensure_bucket(
    js: &jetstream::Context,
    wanted: &kv::Config,
    mode: ProvisionMode,
) -> Result<Provisioned, TopologyError> {
    let stream_name = format!("KV_{}", wanted.bucket);
    let Some(info) = existing_stream(js, &stream_name).await? else {
        if mode == ProvisionMode::Verify {
            return Err(TopologyError::Missing {
                kind: "bucket",
                name: wanted.bucket.clone(),
            });
        }
        js.create_key_value(wanted.clone())
            .await
            .map_err(|e| js_error(format!("create bucket {}", wanted.bucket), e))?;
        return Ok(Provisioned::Created);
    };
    let mut diff = Differences::default();
    diff.check(
        "history",
        info.config.max_messages_per_subject,
        wanted.history,
    );
    diff.check(
        "num_replicas",
        info.config.num_replicas,
        wanted.num_replicas,
    );
    diff.check("storage", info.config.storage, wanted.storage);
    diff.into_result("bucket", &wanted.bucket)?;
    Ok(Provisioned::Unchanged)
}

/// Creates the durable consumer if it is missing, checks it if it exists, and returns it.
///
/// What it reads (filters, ack policy) must match or it is a conflict; how it is read (ack wait,
/// max ack pending) follows the function's settings and is updated in place.
pub async fn ensure_consumer(
    js: &jetstream::Context,
    stream_name: &str,
    wanted: consumer::pull::Config,
) -> Result<consumer::PullConsumer, TopologyError> {
    let durable = wanted.durable_name.clone().unwrap_or_default();
    let stream = js
        .get_stream(stream_name)
        .await
        .map_err(|e| js_error(format!("stream {stream_name}"), e))?;
    match stream.consumer_info(&durable).await {
        Ok(info) => {
            let existing = &info.config;
            let mut existing_filters = existing.filter_subjects.clone();
            if !existing.filter_subject.is_empty() {
                existing_filters.push(existing.filter_subject.clone());
            }
            let mut diff = Differences::default();
            diff.check(
                "filter_subjects",
                &existing_filters,
                &wanted.filter_subjects,
            );
            diff.check("ack_policy", existing.ack_policy, wanted.ack_policy);
            diff.into_result("consumer", &format!("{stream_name}/{durable}"))?;
            if existing.ack_wait != wanted.ack_wait
                || existing.max_ack_pending != wanted.max_ack_pending
            {
                tracing::info!(consumer = %durable, ack_wait = ?wanted.ack_wait, max_ack_pending = wanted.max_ack_pending, "updating consumer settings");
                stream
                    .create_consumer(wanted)
                    .await
                    .map_err(|e| js_error(format!("update consumer {stream_name}/{durable}"), e))?;
            }
        }
        Err(err) => match err.kind() {
            jetstream::context::ConsumerInfoErrorKind::NotFound => {
                stream
                    .create_consumer(wanted)
                    .await
                    .map_err(|e| js_error(format!("create consumer {stream_name}/{durable}"), e))?;
            }
            _ => return Err(js_error(format!("consumer {stream_name}/{durable}"), err)),
        },
    }
    stream
        .get_consumer(&durable)
        .await
        .map_err(|e| js_error(format!("consumer {stream_name}/{durable}"), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_topology_is_complete() {
        let topology = Topology::builtin();
        let configs = topology.stream_configs(&Subjects::default());
        assert_eq!(configs.len(), 5);
        let events = configs.iter().find(|c| c.name == STREAM_EVENTS).unwrap();
        assert_eq!(events.subjects, vec!["freshet.events.*.*"]);
        assert!(
            events
                .subject_transform
                .as_ref()
                .unwrap()
                .destination
                .contains("partition(4,2)")
        );
        assert_eq!(
            topology
                .bucket_configs()
                .iter()
                .find(|b| b.bucket == BUCKET_MODELS)
                .unwrap()
                .history,
            64
        );
    }

    #[test]
    fn the_duplicate_window_setting_applies_to_the_streams_writers_retry_on() {
        let window = |topology: &Topology, name: &str| {
            topology
                .stream_configs(&Subjects::default())
                .into_iter()
                .find(|c| c.name == name)
                .map(|c| c.duplicate_window)
        };
        let builtin = Topology::builtin();
        assert_eq!(
            window(&builtin, STREAM_EVENTS),
            Some(Duration::from_secs(600))
        );
        assert_eq!(
            window(&builtin, STREAM_EXAMPLES),
            Some(Duration::from_secs(600))
        );
        let set = builtin.with_duplicate_window(Duration::from_secs(3600));
        assert_eq!(window(&set, STREAM_EVENTS), Some(Duration::from_secs(3600)));
        assert_eq!(
            window(&set, STREAM_EXAMPLES),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(
            window(&set, STREAM_PREDICTIONS),
            Some(Duration::from_secs(120)),
            "streams nobody retries on keep theirs"
        );
    }

    #[test]
    fn invalid_files_say_what_is_wrong() {
        let err = Topology::parse("partitions = 0", "t.toml").unwrap_err();
        assert!(err.to_string().contains("t.toml"), "{err}");
        let text = BUILTIN.replace("partitions = 4", "partitions = 0");
        let err = Topology::parse(&text, "t.toml").unwrap_err();
        assert!(err.to_string().contains("partitions is 0"), "{err}");
        let text = BUILTIN.replace("[buckets.MODELS]\n", "[buckets.OTHER]\n");
        assert!(
            Topology::parse(&text, "t.toml")
                .unwrap_err()
                .to_string()
                .contains("MODELS")
        );
    }
}
