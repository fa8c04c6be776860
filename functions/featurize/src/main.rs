//! featurize: turns events into entity state (FEATURES) and training examples (EXAMPLES).

// Tests state their expectations with unwrap; a failed unwrap is a failed test.
#![cfg_attr(test, allow(clippy::unwrap_used))]

use std::time::Duration;

use anyhow::Context;
use chrono::TimeDelta;
use clap::Parser;
use freshet::config::{FunctionArgs, ModelArgs, parse_duration};
use freshet::runtime::FunctionContext;
use freshet::runtime::order::OrderGuard;
use freshet::stats::ewma::Decay;
use freshet::subjects::{BUCKET_FEATURES, STREAM_EVENTS};
use freshet_features::bookstore::popularity_spec;
use freshet_featurize::{cache, handler, labels, processor};

/// featurize's batch: each entity a batch touches is read (unless cached) once, so a larger
/// batch folds more of a popular entity's events into one plan. A batch lingers up to the batch
/// wait from its first event's storage and takes a backlog whole, up to this many.
const DEFAULT_BATCH_SIZE: usize = 1024;

/// How often featurize decides the labels whose time has passed.
const LABEL_TICK: Duration = Duration::from_secs(1);

/// Streaming features: consumes EVENTS, keeps user, item and category state in the FEATURES
/// bucket, and publishes labelled examples to EXAMPLES: a purchase within the label horizon of a
/// view labels it 1, the horizon passing without one labels it 0 (with fake-negative weighting,
/// the view goes out at once as a negative and a purchase sends its positive duplicate).
#[derive(Debug, Parser)]
#[command(name = "freshet-featurize", version)]
#[command(mut_arg("model", |a| a.help("Model the bookstore examples are published for")))]
struct Args {
    #[command(flatten)]
    function: FunctionArgs,
    #[command(flatten)]
    model: ModelArgs,
    /// Consume only these partitions (e.g. "0,1"; one durable "featurize-<N>" each); all
    /// partitions through the durable "featurize" when unset. Each durable is worked by one
    /// replica at a time (a lease in LEASES); a replica that cannot take it stands by
    #[arg(long = "partition", env = "FRESHET_PARTITION", value_delimiter = ',')]
    partition: Vec<u32>,
    /// How far an item's event-time watermark trails the latest event time seen for it (and a
    /// user's, for label horizons): events out of order by less are on time
    #[arg(long = "out-of-orderness", env = "FRESHET_OUT_OF_ORDERNESS", default_value = "5s", value_parser = parse_duration)]
    out_of_orderness: Duration,
    /// How long past the watermark an item's one-minute popularity window still takes events. An
    /// action too late for every window it falls in changes nothing and is dead-lettered as
    /// "late". Applies to items first acted on after a change (an item keeps its settings)
    #[arg(long = "allowed-lateness", env = "FRESHET_ALLOWED_LATENESS", default_value = "1m", value_parser = parse_duration)]
    allowed_lateness: Duration,
    /// How long after a view or add-to-cart a purchase of the item labels it 1; once the
    /// partition's event time passes it (or the user's own later events), the view's label is
    /// 0. "0s" labels every action at once (1 for a purchase, 0 otherwise)
    #[arg(long = "label-horizon", env = "FRESHET_LABEL_HORIZON", default_value = "30m", value_parser = parse_duration)]
    label_horizon: Duration,
    /// How a view's label reaches train. "fnw": fake-negative weighting (Ktena et al. 2019),
    /// the view at once as a negative, a positive duplicate when a purchase within the horizon
    /// follows, weighted by train so the model learns the true rate. "wait": the view's example
    /// waits until a purchase or the horizon decides its label (the behaviour before delayed
    /// feedback; kept to compare against)
    #[arg(long = "delayed-feedback", env = "FRESHET_DELAYED_FEEDBACK", default_value_t = labels::Method::FakeNegative)]
    delayed_feedback: labels::Method,
    /// How long a partition may handle no user action before its event time runs on with the
    /// wall clock, so the views of a quiet stream are labelled too: a view due at t is then
    /// decided about this long plus the out-of-orderness after t
    #[arg(long = "label-idle-after", env = "FRESHET_LABEL_IDLE_AFTER", default_value = "1m", value_parser = parse_duration)]
    label_idle_after: Duration,
    /// How far an event's time may lie ahead of when JetStream stored it (the server's clock at
    /// ingest, so a redelivery or a replay of the stream judges an event alike). A later time
    /// is dead-lettered as "future": one event dated years ahead would otherwise move its
    /// item's watermark there and make every honest action on the item late. Producers' clocks
    /// may run this much ahead of the server's
    #[arg(long = "max-future-skew", env = "FRESHET_MAX_FUTURE_SKEW", default_value = "5m", value_parser = parse_duration)]
    max_future_skew: Duration,
    /// Share of negative examples published (0 to 1), chosen by a hash of the view's event id so
    /// a redelivered event decides alike
    #[arg(
        long = "negative-rate",
        env = "FRESHET_NEGATIVE_RATE",
        default_value_t = labels::NegativeRate::ALL
    )]
    negative_rate: labels::NegativeRate,
    /// β of the exponentially weighted mean and variance featurize keeps of each feature for
    /// online standard scaling: μ ← β·μ + (1 − β)·x. Nearer 1 remembers longer; strictly
    /// between 0 and 1
    #[arg(
        long = "ewma-decay",
        env = "FRESHET_EWMA_DECAY",
        default_value = "0.95"
    )]
    ewma_decay: Decay,
    /// FEATURES entries each consumer keeps in memory after writing them, up to about twice
    /// this many: the ones only it writes (its users and scaling state; every entry when it has
    /// all partitions), which it then need not read back before the next batch
    #[arg(
        long = "cached-states",
        env = "FRESHET_CACHED_STATES",
        default_value_t = 10_000
    )]
    cached_states: usize,
    /// Write the FEATURES entries changed by the events held since the last write once this many
    /// are held (each entry once, for all its events), and acknowledge the events then...
    #[arg(
        long = "write-states-every-events",
        env = "FRESHET_WRITE_STATES_EVERY_EVENTS",
        default_value_t = 4096
    )]
    write_states_every_events: usize,
    /// ...or this long after the first of them was handled, whichever comes first. Examples go
    /// out with their batch regardless; this delays only the entries (which predictors read for
    /// their catalogue, and replicas of other partitions for shared items and categories) and the
    /// acknowledgements
    #[arg(long = "write-states-interval", env = "FRESHET_WRITE_STATES_INTERVAL", default_value = "100ms", value_parser = parse_duration)]
    write_states_interval: Duration,
}

impl Args {
    /// The settings featurize plans with, checked.
    fn settings(&self) -> anyhow::Result<handler::Settings> {
        let popularity = popularity_spec(self.out_of_orderness, self.allowed_lateness)
            .context("--out-of-orderness and --allowed-lateness")?;
        let delta = |flag: &str, d: Duration| {
            TimeDelta::from_std(d).with_context(|| format!("{flag} is too long"))
        };
        Ok(handler::Settings {
            model: self.model.name.clone(),
            popularity,
            labels: labels::LabelSettings {
                horizon: delta("--label-horizon", self.label_horizon)?,
                out_of_orderness: delta("--out-of-orderness", self.out_of_orderness)?,
                negative_rate: self.negative_rate,
                method: self.delayed_feedback,
            },
            scaling_decay: self.ewma_decay,
            max_future_skew: delta("--max-future-skew", self.max_future_skew)?,
        })
    }
}

/// featurize's batch wait unless set.
const DEFAULT_BATCH_WAIT: Duration = Duration::from_millis(20);

/// mimalloc: the functions allocate and free many small buffers per message, which it serves
/// faster than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let settings = args.settings()?;
    let mut function = args.function;
    function.batch_size.get_or_insert(DEFAULT_BATCH_SIZE);
    // A short wait lets a batch gather events, so a popular entity's events share one state
    // write (measured: with no wait, the pipeline benchmark's server spent about twice the CPU
    // per event and featurize → train ran at half the rate on two cores).
    function.batch_wait.get_or_insert(DEFAULT_BATCH_WAIT);
    let ctx = FunctionContext::start("featurize", function).await?;
    // CloudEvents pushed to /events (Knative Eventing) join the stream this function reads.
    ctx.serve_http(ctx.ingress(freshet::runtime::ingress::Input::Events))
        .await?;
    // featurize makes the bookstore features for --model: it declares their schema, so train
    // learns under it whichever example arrives first.
    ctx.declare_schema(&args.model.name, &freshet_features::bookstore::schema())
        .await?;
    let features = ctx.key_value(BUCKET_FEATURES).await?;
    let partitions = ctx.topology.partitions;
    if let Some(p) = args.partition.iter().find(|&&p| p >= partitions) {
        anyhow::bail!(
            "partition {p} does not exist: EVENTS has partitions 0 to {}",
            partitions - 1
        );
    }
    // (durable, filter, its partitions)
    let consumers: Vec<(String, String, Vec<u32>)> = if args.partition.is_empty() {
        vec![(
            "featurize".to_string(),
            ctx.subjects.events_stored_all(),
            (0..partitions).collect(),
        )]
    } else {
        args.partition
            .iter()
            .map(|&p| {
                (
                    format!("featurize-{p}"),
                    ctx.subjects.events_stored_partition(p),
                    vec![p],
                )
            })
            .collect()
    };
    let label_metrics = processor::LabelMetrics::default();
    // Label health is the model's: labelled with it, as train's and predict's metrics are.
    label_metrics.register(&ctx.metrics.for_model(&args.model.name.to_string()));
    let state_writes = processor::StateWrites {
        every_events: args.write_states_every_events.max(1),
        interval: args.write_states_interval,
    };
    // The most events held: one short of a write, and then a whole batch.
    let max_held = (state_writes.every_events - 1).saturating_add(ctx.args.batch_size());
    let events = ctx.stream(STREAM_EVENTS).await?;
    // The order guard keeps each durable's events in stream order, which needs one replica per
    // durable at a time: replicas acknowledging one durable's messages concurrently would move
    // its acknowledgement floor out of order.
    let runs = consumers.into_iter().map(|(durable, filter, owned)| {
        let all_partitions = owned.len() as u32 == partitions;
        let featurizer = processor::Featurizer {
            js: ctx.js.clone(),
            features: features.clone(),
            subjects: ctx.subjects.clone(),
            settings: settings.clone(),
            max_event_bytes: ctx.args.max_event_bytes,
            order: OrderGuard::new(events.clone(), filter.clone(), durable.clone()),
            mark: None,
            mark_delivery: None,
            cache: cache::StateCache::new(args.cached_states, all_partitions),
            state_writes,
            unwritten: processor::Unwritten::default(),
            partitions: owned,
            ticks: processor::LabelTicks::new(LABEL_TICK, args.label_idle_after),
            label_metrics: label_metrics.clone(),
        };
        let ctx = &ctx;
        async move {
            ctx.exclusively(&format!("featurize.{durable}"), async {
                ctx.consume(STREAM_EVENTS, &durable, vec![filter], max_held, featurizer)
                    .await
            })
            .await
        }
    });
    let outcome = futures::future::try_join_all(runs).await;
    ctx.flush_spans().await;
    outcome.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(flags: &[&str]) -> anyhow::Result<handler::Settings> {
        let argv = std::iter::once("featurize").chain(flags.iter().copied());
        Args::try_parse_from(argv)?.settings()
    }

    #[test]
    fn window_and_label_flags_have_defaults_and_are_checked() {
        let defaults = settings(&[]).unwrap();
        assert_eq!(
            defaults.popularity.out_of_orderness(),
            Duration::from_secs(5)
        );
        assert_eq!(
            defaults.popularity.allowed_lateness(),
            Duration::from_secs(60)
        );
        assert_eq!(defaults.labels.horizon, TimeDelta::minutes(30));
        assert_eq!(defaults.labels.out_of_orderness, TimeDelta::seconds(5));
        assert_eq!(defaults.labels.negative_rate, labels::NegativeRate::ALL);
        assert_eq!(defaults.labels.method, labels::Method::FakeNegative);
        assert_eq!(defaults.scaling_decay.get(), 0.95);
        assert_eq!(defaults.max_future_skew, TimeDelta::minutes(5));

        let set = settings(&[
            "--out-of-orderness",
            "250ms",
            "--allowed-lateness",
            "5m",
            "--label-horizon",
            "0s",
            "--negative-rate",
            "0.2",
            "--ewma-decay",
            "0.8",
            "--max-future-skew",
            "30s",
            "--delayed-feedback",
            "wait",
        ])
        .unwrap();
        assert_eq!(set.labels.method, labels::Method::Wait);
        assert_eq!(
            set.popularity.out_of_orderness(),
            Duration::from_millis(250)
        );
        assert_eq!(set.popularity.allowed_lateness(), Duration::from_secs(300));
        assert_eq!(set.labels.horizon, TimeDelta::zero());
        assert_eq!(
            set.labels.negative_rate,
            labels::NegativeRate::new(0.2).unwrap()
        );
        assert_eq!(set.scaling_decay.get(), 0.8);
        assert_eq!(set.max_future_skew, TimeDelta::seconds(30));

        for bad in [
            &["--negative-rate", "1.5"][..],
            &["--ewma-decay", "1"],
            &["--ewma-decay", "warm"],
            &["--allowed-lateness", "soon"],
            // An item would keep more windows than a state may hold.
            &["--allowed-lateness", "2days"],
            &["--out-of-orderness", "1us"],
            &["--delayed-feedback", "later"],
        ] {
            assert!(settings(bad).is_err(), "{bad:?}");
        }
    }
}
