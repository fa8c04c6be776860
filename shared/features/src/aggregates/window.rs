//! Event-time windows over one entity's values: count, sum and mean per window, tumbling or
//! sliding, with a watermark, an allowed lateness and a bounded state.
//!
//! **Windows.** A window is `[start, start + size)` with `start` a multiple of the slide since the
//! Unix epoch (negative times included); tumbling windows are the case slide = size. The slide
//! must divide the size, so an instant lies in exactly size/slide windows.
//!
//! **Watermark.** The watermark is the greatest event time accepted minus the out-of-orderness
//! bound: the claim that no event earlier than it is still expected. It never moves back, and it
//! is undefined (nothing is late) until the first event. One event dated far ahead would move it
//! there for good; [`EventTimeWindows::add_within`] refuses events after a caller's bound.
//!
//! **Lateness.** A window is *complete* once `watermark ≥ end` and *final* once
//! `watermark ≥ end + allowed_lateness`. An event is [`AddError::Late`] when every window
//! containing it is final when it arrives (judged against the watermark before the event), which
//! is when the last of them, the one starting at `floor(t / slide) · slide`, is final:
//! `floor(t / slide) · slide + size + allowed_lateness ≤ watermark`. A late event changes nothing
//! but the late counter. An event that lands in a window already complete but not final is
//! accepted as [`Accepted::WithinLateness`]. These are Flink's verdicts: Flink's bounded
//! out-of-orderness watermark is one millisecond lower than this one (`max − bound − 1`) and it
//! tests windows by their last millisecond (`end − 1`), and the two offsets cancel. Flink emits
//! watermarks periodically; here the watermark moves with every event.
//!
//! Each window containing an accepted event is updated unless it is already final (Flink skips a
//! final window but still adds the event to the open ones), so a final window never changes.
//!
//! **State.** Only windows holding a value are stored, keyed by start. A window is evicted once it
//! is final and older than the `history` windows that [`EventTimeWindows::recent`] may reach
//! back to: precisely, stored windows start at or after the earlier of the oldest open window
//! and `end − history · size`, with `end` the end of the latest event's slide. The state therefore
//! holds at most `max(ceil((out_of_orderness + size + allowed_lateness) / slide),
//! history · size / slide)` windows ([`WindowSpec::max_stored_windows`]); a spec whose bound
//! exceeds [`MAX_STORED_WINDOWS`] is refused. Times are whole milliseconds inside and
//! `DateTime<Utc>` at the API.

use std::collections::VecDeque;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{MAX_ABS_VALUE, ValueError, check_value};

/// The most windows one state may need. At about 30 bytes of JSON per window this keeps a state
/// around 32 KiB at worst, far below a KV value's limit.
pub const MAX_STORED_WINDOWS: u64 = 1024;
/// The longest any duration setting may be: 1000 years. With event times within chrono's range
/// (±8.3·10¹⁵ ms), every sum of a time and a few settings stays far inside `i64`.
const MAX_DURATION_MS: i64 = 1000 * 366 * 24 * 3600 * 1000;

/// Why a window configuration, or a decoded window state, was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// A duration with a fraction of a millisecond, which window alignment cannot honour.
    #[error("{setting} must be a whole number of milliseconds")]
    SubMillisecond { setting: &'static str },
    /// A duration outside the accepted range.
    #[error("{setting} must be between {min_ms} ms and {MAX_DURATION_MS} ms, got {ms} ms")]
    DurationRange {
        setting: &'static str,
        ms: i64,
        min_ms: i64,
    },
    /// The slide does not divide the size (or exceeds it).
    #[error("the slide ({slide_ms} ms) must divide the size ({size_ms} ms)")]
    SlideNotDivisor { size_ms: i64, slide_ms: i64 },
    /// `history` is 0: even the current window could not be queried.
    #[error("history must be at least 1 window")]
    ZeroHistory,
    /// The settings would let the state grow beyond [`MAX_STORED_WINDOWS`].
    #[error("these settings keep up to {windows} windows, the limit is {max}")]
    TooManyWindows { windows: u64, max: u64 },
    /// A decoded state whose windows are not what its spec could have produced.
    #[error("stored windows are inconsistent: {0}")]
    InconsistentState(&'static str),
}

/// Why [`EventTimeWindows::add`] did not take a value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AddError {
    /// Every window containing the event was already final: the event is dropped and counted.
    #[error(
        "event at {event_time} is late: its last window ended at {window_end}, and the \
         watermark {watermark} is past it by at least the allowed lateness"
    )]
    Late {
        event_time: DateTime<Utc>,
        /// End of the last window that contains the event.
        window_end: DateTime<Utc>,
        watermark: DateTime<Utc>,
    },
    /// The event lies after the latest time the caller allows ([`EventTimeWindows::add_within`]):
    /// taking it would move the watermark there and make every honest event before it late.
    /// Nothing changed, the late counter included.
    #[error("event at {event_time} is after {latest_allowed}, the latest event time accepted now")]
    Future {
        event_time: DateTime<Utc>,
        latest_allowed: DateTime<Utc>,
    },
    /// The value itself was refused; nothing changed, the late counter included.
    #[error(transparent)]
    Value(#[from] ValueError),
}

impl AddError {
    /// Whether the event was refused for being late (as opposed to for its value).
    pub fn is_late(&self) -> bool {
        matches!(self, AddError::Late { .. })
    }
}

/// Why a window query has no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// The window is final and older than the history kept: it was evicted.
    #[error("the window starting at {start} was evicted; the oldest kept starts at {oldest_kept}")]
    Evicted {
        start: DateTime<Utc>,
        oldest_kept: DateTime<Utc>,
    },
    /// A recent query for 0 windows, or more than the spec keeps.
    #[error("cannot aggregate {asked} windows: between 1 and {history} are kept")]
    WindowCount { asked: u32, history: u32 },
}

/// How an accepted event related to the watermark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// No window the event was added to was complete yet.
    OnTime,
    /// The event revised at least one complete window (end ≤ watermark) that was not yet final:
    /// a reader may already have taken that window's aggregate as settled.
    WithinLateness,
}

/// Window settings as configured, before they are checked: see [`WindowSpec::new`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowConfig {
    /// How long each window is.
    pub size: Duration,
    /// How far apart consecutive windows start; equal to `size` for tumbling windows.
    pub slide: Duration,
    /// How far behind the latest event time the watermark trails; may be zero.
    pub out_of_orderness: Duration,
    /// How long past the watermark a complete window still accepts events; may be zero.
    pub allowed_lateness: Duration,
    /// How many back-to-back windows [`EventTimeWindows::recent`] may sum (at least 1).
    pub history: u32,
}

impl WindowConfig {
    /// Tumbling windows of `size`, no out-of-orderness, no lateness, a history of one window.
    pub fn tumbling(size: Duration) -> WindowConfig {
        WindowConfig::sliding(size, size)
    }

    /// Sliding windows of `size` every `slide`, no out-of-orderness, no lateness, a history of
    /// one window.
    pub fn sliding(size: Duration, slide: Duration) -> WindowConfig {
        WindowConfig {
            size,
            slide,
            out_of_orderness: Duration::ZERO,
            allowed_lateness: Duration::ZERO,
            history: 1,
        }
    }
}

/// Checked window settings, in milliseconds. Stored in each state, so a state is read with the
/// settings that built it even if the configuration changes later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "SpecFields")]
pub struct WindowSpec {
    size_ms: i64,
    slide_ms: i64,
    out_of_orderness_ms: i64,
    allowed_lateness_ms: i64,
    history: u32,
}

/// The serialised form of a [`WindowSpec`], checked on the way in.
#[derive(Deserialize)]
struct SpecFields {
    size_ms: i64,
    slide_ms: i64,
    out_of_orderness_ms: i64,
    allowed_lateness_ms: i64,
    history: u32,
}

impl TryFrom<SpecFields> for WindowSpec {
    type Error = SpecError;

    fn try_from(f: SpecFields) -> Result<WindowSpec, SpecError> {
        WindowSpec::from_millis(
            f.size_ms,
            f.slide_ms,
            f.out_of_orderness_ms,
            f.allowed_lateness_ms,
            f.history,
        )
    }
}

fn millis(setting: &'static str, d: Duration) -> Result<i64, SpecError> {
    if !d.subsec_nanos().is_multiple_of(1_000_000) {
        return Err(SpecError::SubMillisecond { setting });
    }
    // Too long a duration is reported by `from_millis`; saturating keeps it reportable.
    Ok(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn check_range(setting: &'static str, ms: i64, min_ms: i64) -> Result<(), SpecError> {
    if (min_ms..=MAX_DURATION_MS).contains(&ms) {
        Ok(())
    } else {
        Err(SpecError::DurationRange {
            setting,
            ms,
            min_ms,
        })
    }
}

impl WindowSpec {
    /// Checks `config`: size and slide at least 1 ms, every duration whole milliseconds and at
    /// most 1000 years, the slide dividing the size, history at least 1, and a state bound
    /// ([`max_stored_windows`](Self::max_stored_windows)) within [`MAX_STORED_WINDOWS`].
    pub fn new(config: &WindowConfig) -> Result<WindowSpec, SpecError> {
        WindowSpec::from_millis(
            millis("size", config.size)?,
            millis("slide", config.slide)?,
            millis("out_of_orderness", config.out_of_orderness)?,
            millis("allowed_lateness", config.allowed_lateness)?,
            config.history,
        )
    }

    fn from_millis(
        size_ms: i64,
        slide_ms: i64,
        out_of_orderness_ms: i64,
        allowed_lateness_ms: i64,
        history: u32,
    ) -> Result<WindowSpec, SpecError> {
        check_range("size", size_ms, 1)?;
        check_range("slide", slide_ms, 1)?;
        check_range("out_of_orderness", out_of_orderness_ms, 0)?;
        check_range("allowed_lateness", allowed_lateness_ms, 0)?;
        if size_ms % slide_ms != 0 {
            return Err(SpecError::SlideNotDivisor { size_ms, slide_ms });
        }
        if history == 0 {
            return Err(SpecError::ZeroHistory);
        }
        let spec = WindowSpec {
            size_ms,
            slide_ms,
            out_of_orderness_ms,
            allowed_lateness_ms,
            history,
        };
        let windows = spec.max_stored_windows();
        if windows > MAX_STORED_WINDOWS {
            return Err(SpecError::TooManyWindows {
                windows,
                max: MAX_STORED_WINDOWS,
            });
        }
        Ok(spec)
    }

    pub fn size(&self) -> Duration {
        duration(self.size_ms)
    }

    pub fn slide(&self) -> Duration {
        duration(self.slide_ms)
    }

    pub fn out_of_orderness(&self) -> Duration {
        duration(self.out_of_orderness_ms)
    }

    pub fn allowed_lateness(&self) -> Duration {
        duration(self.allowed_lateness_ms)
    }

    /// How many back-to-back windows a recent query may sum.
    pub fn history(&self) -> u32 {
        self.history
    }

    /// The most windows a state with this spec ever stores:
    /// `max(ceil((out_of_orderness + size + allowed_lateness) / slide), history · size / slide)`.
    ///
    /// Stored windows start at slide multiples from the horizon (see
    /// [`EventTimeWindows::add`]) up to the latest event's slide. The first term counts them when
    /// the horizon is the oldest open window, which starts after
    /// `latest − out_of_orderness − size − allowed_lateness`; the second when it is
    /// `history · size` before the end of the latest slide.
    pub fn max_stored_windows(&self) -> u64 {
        // Every term is a checked duration (≤ 1000 years), so none of this can overflow.
        let span = self.out_of_orderness_ms + self.size_ms + self.allowed_lateness_ms;
        let open = (span + self.slide_ms - 1) / self.slide_ms;
        let history = i64::from(self.history) * (self.size_ms / self.slide_ms);
        u64::try_from(open.max(history)).unwrap_or(u64::MAX)
    }

    /// How many windows contain any one instant.
    fn windows_per_instant(&self) -> i64 {
        self.size_ms / self.slide_ms
    }
}

fn duration(ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// The latest multiple of `step` at or before `t` (floor, also for negative times).
fn align(t: i64, step: i64) -> i64 {
    t.div_euclid(step).saturating_mul(step)
}

/// Milliseconds as a time, clamped to chrono's range (a window end can lie just beyond it).
fn time(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or(if ms < 0 {
        DateTime::<Utc>::MIN_UTC
    } else {
        DateTime::<Utc>::MAX_UTC
    })
}

/// The count and sum of one stored window.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(from = "(i64, u64, f64)", into = "(i64, u64, f64)")]
struct Tally {
    start_ms: i64,
    count: u64,
    sum: f64,
}

// Stored windows are serialised as `[start_ms, count, sum]`: they are most of a state's bytes,
// and field names would double them.
impl From<(i64, u64, f64)> for Tally {
    fn from((start_ms, count, sum): (i64, u64, f64)) -> Tally {
        Tally {
            start_ms,
            count,
            sum,
        }
    }
}

impl From<Tally> for (i64, u64, f64) {
    fn from(tally: Tally) -> (i64, u64, f64) {
        (tally.start_ms, tally.count, tally.sum)
    }
}

/// The aggregate of the values counted in `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WindowAggregate {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub count: u64,
    pub sum: f64,
    /// Whether the watermark is at least `end + allowed_lateness`: no event can change it.
    pub is_final: bool,
}

impl WindowAggregate {
    /// The mean value, if the window holds any.
    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum / self.count as f64)
    }
}

/// The event-time windows of one entity: its non-empty windows, watermark and late counter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "WindowsFields")]
pub struct EventTimeWindows {
    spec: WindowSpec,
    /// The greatest event time accepted, in ms; `None` until the first event.
    max_event_ms: Option<i64>,
    late_count: u64,
    /// Non-empty windows in ascending start order.
    windows: VecDeque<Tally>,
}

/// The serialised form of [`EventTimeWindows`], checked on the way in so that a hand-edited or
/// corrupted entry is refused rather than silently misread.
#[derive(Deserialize)]
struct WindowsFields {
    spec: WindowSpec,
    max_event_ms: Option<i64>,
    late_count: u64,
    windows: VecDeque<Tally>,
}

impl TryFrom<WindowsFields> for EventTimeWindows {
    type Error = SpecError;

    fn try_from(f: WindowsFields) -> Result<EventTimeWindows, SpecError> {
        let inconsistent = |why| Err(SpecError::InconsistentState(why));
        let ascending = f
            .windows
            .iter()
            .zip(f.windows.iter().skip(1))
            .all(|(a, b)| a.start_ms < b.start_ms);
        if !ascending {
            return inconsistent("windows are not in ascending order");
        }
        if f.windows.iter().any(|w| w.start_ms % f.spec.slide_ms != 0) {
            return inconsistent("a window is not aligned to the slide");
        }
        // Every stored value was within ±MAX_ABS_VALUE, which is what keeps later sums finite.
        let plausible = |w: &Tally| w.count > 0 && w.sum.abs() <= w.count as f64 * MAX_ABS_VALUE;
        if !f.windows.iter().all(plausible) {
            return inconsistent("a window is empty or its sum is out of range");
        }
        if f.windows.len() as u64 > f.spec.max_stored_windows() {
            return inconsistent("more windows than the spec allows");
        }
        if let Some(last) = f.windows.back()
            && f.max_event_ms.is_none_or(|max| last.start_ms > max)
        {
            return inconsistent("a window starts after the latest event");
        }
        Ok(EventTimeWindows {
            spec: f.spec,
            max_event_ms: f.max_event_ms,
            late_count: f.late_count,
            windows: f.windows,
        })
    }
}

impl EventTimeWindows {
    /// Windows that have seen nothing.
    pub fn new(spec: WindowSpec) -> EventTimeWindows {
        EventTimeWindows {
            spec,
            max_event_ms: None,
            late_count: 0,
            windows: VecDeque::new(),
        }
    }

    /// The settings this state was built with.
    pub fn spec(&self) -> &WindowSpec {
        &self.spec
    }

    /// The latest event time minus the out-of-orderness bound; `None` before the first event.
    pub fn watermark(&self) -> Option<DateTime<Utc>> {
        self.watermark_ms().map(time)
    }

    /// How many events were refused as late (saturating).
    pub fn late_count(&self) -> u64 {
        self.late_count
    }

    /// How many windows are stored; never more than [`WindowSpec::max_stored_windows`].
    pub fn stored_windows(&self) -> usize {
        self.windows.len()
    }

    /// Adds `value` at `event_time` to every window containing it that is not final, or refuses
    /// it: as [`AddError::Late`] if all those windows are final (only the late counter changes),
    /// or as [`AddError::Value`] if the value is NaN, infinite or beyond ±[`MAX_ABS_VALUE`]
    /// (nothing changes). Then the watermark advances and windows before the horizon (final and
    /// beyond the history) are evicted.
    pub fn add(&mut self, event_time: DateTime<Utc>, value: f64) -> Result<Accepted, AddError> {
        let value = check_value(value)?;
        let t = event_time.timestamp_millis();
        let last_start = align(t, self.spec.slide_ms);
        let watermark = self.watermark_ms();
        let is_final = |start: i64| {
            watermark.is_some_and(|watermark| {
                self.end_of(start)
                    .saturating_add(self.spec.allowed_lateness_ms)
                    <= watermark
            })
        };
        // The window containing t that ends last starts at t's slide: if it is final, all are.
        if let Some(watermark) = watermark
            && is_final(last_start)
        {
            self.late_count = self.late_count.saturating_add(1);
            return Err(AddError::Late {
                event_time,
                window_end: time(self.end_of(last_start)),
                watermark: time(watermark),
            });
        }
        let open_starts: Vec<i64> = (0..self.spec.windows_per_instant())
            .map(|k| last_start.saturating_sub(k.saturating_mul(self.spec.slide_ms)))
            .filter(|&start| !is_final(start))
            .collect();
        let revised = watermark.is_some_and(|watermark| {
            open_starts
                .iter()
                .any(|&start| self.end_of(start) <= watermark)
        });
        for start in open_starts {
            match self.windows.binary_search_by_key(&start, |w| w.start_ms) {
                Ok(i) => {
                    if let Some(window) = self.windows.get_mut(i) {
                        window.count = window.count.saturating_add(1);
                        window.sum += value;
                    }
                }
                Err(i) => self.windows.insert(
                    i,
                    Tally {
                        start_ms: start,
                        count: 1,
                        sum: value,
                    },
                ),
            }
        }
        self.max_event_ms = Some(self.max_event_ms.map_or(t, |max| max.max(t)));
        self.evict();
        Ok(if revised {
            Accepted::WithinLateness
        } else {
            Accepted::OnTime
        })
    }

    /// Like [`add`](Self::add), but refuses an event after `latest_allowed` as
    /// [`AddError::Future`], changing nothing: no single event can move the watermark past
    /// `latest_allowed − out_of_orderness`. A caller passes the time it handles the event at
    /// plus the clock skew it tolerates.
    pub fn add_within(
        &mut self,
        event_time: DateTime<Utc>,
        value: f64,
        latest_allowed: DateTime<Utc>,
    ) -> Result<Accepted, AddError> {
        if event_time > latest_allowed {
            return Err(AddError::Future {
                event_time,
                latest_allowed,
            });
        }
        self.add(event_time, value)
    }

    /// The window that starts at `start`, or at the slide boundary just before it.
    pub fn window(&self, start: DateTime<Utc>) -> Result<WindowAggregate, QueryError> {
        self.aggregate(align(start.timestamp_millis(), self.spec.slide_ms))
    }

    /// The window containing `t` that ends first, `[end − size, end)` with `end` the end of
    /// `t`'s slide: for tumbling windows, the one window containing `t`; for sliding ones, the
    /// latest full `size` of history up to `t`. Equal to `recent(t, 1)`.
    pub fn window_at(&self, t: DateTime<Utc>) -> Result<WindowAggregate, QueryError> {
        let end = self.end_of_slide(t);
        self.aggregate(end.saturating_sub(self.spec.size_ms))
    }

    /// Every window containing `t` (size/slide of them), in start order.
    pub fn windows_containing(&self, t: DateTime<Utc>) -> Result<Vec<WindowAggregate>, QueryError> {
        let last_start = align(t.timestamp_millis(), self.spec.slide_ms);
        (0..self.spec.windows_per_instant())
            .rev()
            .map(|k| {
                self.aggregate(last_start.saturating_sub(k.saturating_mul(self.spec.slide_ms)))
            })
            .collect()
    }

    /// Every stored window (each holds at least one value), in start order.
    pub fn windows(&self) -> Vec<WindowAggregate> {
        self.windows
            .iter()
            .map(|w| self.summarise(w.start_ms, self.end_of(w.start_ms), w.count, w.sum))
            .collect()
    }

    /// The sum of the `n` back-to-back windows that end at the end of `now`'s slide: the span
    /// `[end − n · size, end)`. With tumbling windows of a minute and `n = 60`, the last hour,
    /// the current, partly elapsed minute included (and with it any value already seen later in
    /// that minute). `is_final` tells whether the latest of the `n` windows is final.
    ///
    /// `n` must be between 1 and the spec's history. When `now` is at or after the latest event
    /// the answer is always available; a `now` further back may need evicted windows, and gets
    /// [`QueryError::Evicted`].
    pub fn recent(&self, now: DateTime<Utc>, n: u32) -> Result<WindowAggregate, QueryError> {
        if n == 0 || n > self.spec.history {
            return Err(QueryError::WindowCount {
                asked: n,
                history: self.spec.history,
            });
        }
        // Summed in milliseconds and built once: this runs for every feature vector.
        let end = self.end_of_slide(now);
        let horizon = self.horizon_ms();
        let (mut start, mut count, mut sum) = (end, 0u64, 0.0);
        for k in 1..=i64::from(n) {
            let window_start = end.saturating_sub(k.saturating_mul(self.spec.size_ms));
            if let Some(horizon) = horizon
                && window_start < horizon
            {
                return Err(QueryError::Evicted {
                    start: time(window_start),
                    oldest_kept: time(horizon),
                });
            }
            let (window_count, window_sum) = self.count_and_sum(window_start);
            start = window_start;
            count = count.saturating_add(window_count);
            sum += window_sum;
        }
        let newest = end.saturating_sub(self.spec.size_ms);
        Ok(WindowAggregate {
            start: time(start),
            ..self.summarise(newest, self.end_of(newest), count, sum)
        })
    }

    /// The (count, sum) of the `span` windows ending at the end of `now`'s slide, as
    /// [`recent`](Self::recent) has them, and otherwise (a window already evicted, which only a
    /// `now` well before the latest event asks for, or a span beyond the history of a state built
    /// with other settings) the back-to-back windows of the span still kept, the others counting
    /// as empty: always defined.
    pub fn span_totals(&self, now: DateTime<Utc>, span: u32) -> (f64, f64) {
        if let Ok(recent) = self.recent(now, span) {
            return (recent.count as f64, recent.sum);
        }
        let (Ok(size), Ok(slide)) = (
            i64::try_from(self.spec.size().as_millis()),
            i64::try_from(self.spec.slide().as_millis()),
        ) else {
            return (0.0, 0.0);
        };
        if size <= 0 || slide <= 0 {
            return (0.0, 0.0);
        }
        let end = now
            .timestamp_millis()
            .div_euclid(slide)
            .saturating_mul(slide)
            .saturating_add(slide);
        let start = end.saturating_sub(size.saturating_mul(i64::from(span)));
        self.windows()
            .iter()
            .filter(|w| {
                let s = w.start.timestamp_millis();
                s >= start && s < end && (end - s) % size == 0
            })
            .fold((0.0, 0.0), |(count, sum), w| {
                (count + w.count as f64, sum + w.sum)
            })
    }

    /// The count and sum of the window starting at `start_ms` (zero if it holds nothing).
    fn count_and_sum(&self, start_ms: i64) -> (u64, f64) {
        match self.windows.binary_search_by_key(&start_ms, |w| w.start_ms) {
            Ok(i) => self.windows.get(i).map_or((0, 0.0), |w| (w.count, w.sum)),
            Err(_) => (0, 0.0),
        }
    }

    fn watermark_ms(&self) -> Option<i64> {
        self.max_event_ms
            .map(|max| max.saturating_sub(self.spec.out_of_orderness_ms))
    }

    fn end_of(&self, start_ms: i64) -> i64 {
        start_ms.saturating_add(self.spec.size_ms)
    }

    fn end_of_slide(&self, t: DateTime<Utc>) -> i64 {
        align(t.timestamp_millis(), self.spec.slide_ms).saturating_add(self.spec.slide_ms)
    }

    /// The start of the oldest window kept: the earlier of the oldest window that is not final
    /// and the oldest one a recent query at or after the latest event can reach. Every earlier
    /// window is final, so no event can recreate it.
    fn horizon_ms(&self) -> Option<i64> {
        let watermark = self.watermark_ms()?;
        let latest = self.max_event_ms?;
        let final_up_to = watermark
            .saturating_sub(self.spec.size_ms)
            .saturating_sub(self.spec.allowed_lateness_ms);
        // Windows starting at or before `final_up_to` are final; the next slide is open.
        let oldest_open = align(final_up_to, self.spec.slide_ms).saturating_add(self.spec.slide_ms);
        let reach = i64::from(self.spec.history).saturating_mul(self.spec.size_ms);
        let oldest_recent = align(latest, self.spec.slide_ms)
            .saturating_add(self.spec.slide_ms)
            .saturating_sub(reach);
        Some(oldest_open.min(oldest_recent))
    }

    fn evict(&mut self) {
        if let Some(horizon) = self.horizon_ms() {
            while self.windows.front().is_some_and(|w| w.start_ms < horizon) {
                self.windows.pop_front();
            }
        }
    }

    /// The aggregate of the window starting at `start_ms`, or `Evicted` if it is gone.
    fn aggregate(&self, start_ms: i64) -> Result<WindowAggregate, QueryError> {
        if let Some(horizon) = self.horizon_ms()
            && start_ms < horizon
        {
            return Err(QueryError::Evicted {
                start: time(start_ms),
                oldest_kept: time(horizon),
            });
        }
        let (count, sum) = self.count_and_sum(start_ms);
        Ok(self.summarise(start_ms, self.end_of(start_ms), count, sum))
    }

    fn summarise(&self, start_ms: i64, end_ms: i64, count: u64, sum: f64) -> WindowAggregate {
        let is_final = self.watermark_ms().is_some_and(|watermark| {
            end_ms.saturating_add(self.spec.allowed_lateness_ms) <= watermark
        });
        WindowAggregate {
            start: time(start_ms),
            end: time(end_ms),
            count,
            sum,
            is_final,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    /// A round time (a multiple of a minute), so windows of seconds start at round offsets.
    const BASE: i64 = 1_699_999_980_000;

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(ms).unwrap()
    }

    fn spec(
        size: i64,
        slide: i64,
        out_of_orderness: i64,
        lateness: i64,
        history: u32,
    ) -> WindowSpec {
        let ms = |ms: i64| Duration::from_millis(ms as u64);
        WindowSpec::new(&WindowConfig {
            size: ms(size),
            slide: ms(slide),
            out_of_orderness: ms(out_of_orderness),
            allowed_lateness: ms(lateness),
            history,
        })
        .unwrap()
    }

    /// (start, end, count, sum, is_final) of a window, relative to `base`.
    fn summary(w: &WindowAggregate, base: i64) -> (i64, i64, u64, f64, bool) {
        let ms = |t: DateTime<Utc>| t.timestamp_millis() - base;
        (ms(w.start), ms(w.end), w.count, w.sum, w.is_final)
    }

    #[test]
    fn settings_are_checked() {
        let ms = Duration::from_millis;
        let minutes = WindowConfig {
            out_of_orderness: ms(10_000),
            allowed_lateness: ms(300_000),
            history: 60,
            ..WindowConfig::tumbling(ms(60_000))
        };
        let checked = WindowSpec::new(&minutes).unwrap();
        assert_eq!(
            checked.max_stored_windows(),
            60,
            "max(ceil(370 s / 60 s), 60)"
        );
        assert_eq!(checked.allowed_lateness(), ms(300_000));
        let millennium = 1001 * 366 * 86_400;
        let cases = [
            (
                WindowConfig::tumbling(Duration::ZERO),
                SpecError::DurationRange {
                    setting: "size",
                    ms: 0,
                    min_ms: 1,
                },
            ),
            (
                WindowConfig::tumbling(Duration::from_micros(1500)),
                SpecError::SubMillisecond { setting: "size" },
            ),
            (
                WindowConfig::tumbling(Duration::from_secs(millennium)),
                SpecError::DurationRange {
                    setting: "size",
                    ms: millennium as i64 * 1000,
                    min_ms: 1,
                },
            ),
            (
                WindowConfig {
                    out_of_orderness: Duration::from_secs(u64::MAX),
                    ..WindowConfig::tumbling(ms(1000))
                },
                SpecError::DurationRange {
                    setting: "out_of_orderness",
                    ms: i64::MAX,
                    min_ms: 0,
                },
            ),
            (
                WindowConfig::sliding(ms(10_000), ms(3_000)),
                SpecError::SlideNotDivisor {
                    size_ms: 10_000,
                    slide_ms: 3_000,
                },
            ),
            (
                WindowConfig::sliding(ms(10_000), ms(20_000)),
                SpecError::SlideNotDivisor {
                    size_ms: 10_000,
                    slide_ms: 20_000,
                },
            ),
            (
                WindowConfig {
                    history: 0,
                    ..WindowConfig::tumbling(ms(1000))
                },
                SpecError::ZeroHistory,
            ),
            (
                WindowConfig {
                    allowed_lateness: ms(2_000_000),
                    ..WindowConfig::tumbling(ms(1000))
                },
                SpecError::TooManyWindows {
                    windows: 2001,
                    max: MAX_STORED_WINDOWS,
                },
            ),
            (
                WindowConfig {
                    history: 100,
                    ..WindowConfig::sliding(ms(60_000), ms(1000))
                },
                SpecError::TooManyWindows {
                    windows: 6000,
                    max: MAX_STORED_WINDOWS,
                },
            ),
        ];
        for (config, expected) in cases {
            assert_eq!(WindowSpec::new(&config), Err(expected), "{config:?}");
        }
        for json in [
            r#"{"size_ms":10,"slide_ms":0,"out_of_orderness_ms":0,"allowed_lateness_ms":0,"history":1}"#,
            r#"{"size_ms":-10,"slide_ms":-5,"out_of_orderness_ms":0,"allowed_lateness_ms":0,"history":1}"#,
            r#"{"size_ms":10,"slide_ms":5,"out_of_orderness_ms":-1,"allowed_lateness_ms":0,"history":1}"#,
        ] {
            assert!(serde_json::from_str::<WindowSpec>(json).is_err(), "{json}");
        }
    }

    #[test]
    fn windows_align_to_epoch_multiples() {
        // A generous out-of-orderness bound, so that no event here is late.
        let mut windows = EventTimeWindows::new(spec(10_000, 10_000, 3_600_000, 0, 1));
        for (t, value) in [
            (-1, 1.0),
            (0, 2.0),
            (9_999, 4.0),
            (10_000, 8.0),
            (-10_000, 16.0),
            (-10_001, 32.0),
        ] {
            assert_eq!(windows.add(at(t), value), Ok(Accepted::OnTime), "{t}");
        }
        let cases = [
            (-1, (-10_000, 0, 2, 17.0, false)),
            (-10_000, (-10_000, 0, 2, 17.0, false)),
            (0, (0, 10_000, 2, 6.0, false)),
            (9_999, (0, 10_000, 2, 6.0, false)),
            (10_000, (10_000, 20_000, 1, 8.0, false)),
            (-10_001, (-20_000, -10_000, 1, 32.0, false)),
            (25_000, (20_000, 30_000, 0, 0.0, false)),
        ];
        for (t, expected) in cases {
            assert_eq!(
                summary(&windows.window_at(at(t)).unwrap(), 0),
                expected,
                "{t}"
            );
        }
        assert_eq!(windows.window_at(at(0)).unwrap().mean(), Some(3.0));
        assert_eq!(windows.window_at(at(25_000)).unwrap().mean(), None);
    }

    #[test]
    fn lateness_follows_the_watermark() {
        // Tumbling 10 s windows, watermark 2 s behind the latest event, 5 s of lateness: window
        // [0, 10) is complete at watermark 10 and final at watermark 15.
        let mut windows = EventTimeWindows::new(spec(10_000, 10_000, 2_000, 5_000, 3));
        use Accepted::{OnTime, WithinLateness};
        let late = None;
        let steps: [(i64, Option<Accepted>, i64); 11] = [
            (12_000, Some(OnTime), 10_000),
            (5_000, Some(WithinLateness), 10_000), // [0, 10) complete, not final: 15 > 10
            (21_000, Some(OnTime), 19_000),
            (3_000, late, 19_000),          // [0, 10) final: 10 + 5 ≤ 19
            (17_000, Some(OnTime), 19_000), // [10, 20) not complete: 20 > 19
            (22_000, Some(OnTime), 20_000),
            (19_999, Some(WithinLateness), 20_000), // [10, 20) complete at exactly 20
            (26_999, Some(OnTime), 24_999),
            (10_000, Some(WithinLateness), 24_999), // [10, 20) final only at 25
            (27_000, Some(OnTime), 25_000),
            (14_000, late, 25_000), // 20 + 5 ≤ 25: final at exactly the bound
        ];
        for (value, (t, expected, watermark)) in (1..).zip(steps) {
            let verdict = windows.add(at(BASE + t), f64::from(value));
            match expected {
                Some(accepted) => assert_eq!(verdict, Ok(accepted), "{t}"),
                None => assert!(verdict.unwrap_err().is_late(), "{t}"),
            }
            assert_eq!(windows.watermark(), Some(at(BASE + watermark)), "after {t}");
        }
        assert_eq!(windows.late_count(), 2);
        let summaries: Vec<_> = windows.windows().iter().map(|w| summary(w, BASE)).collect();
        assert_eq!(
            summaries,
            [
                (0, 10_000, 1, 2.0, true),
                (10_000, 20_000, 4, 1.0 + 5.0 + 7.0 + 9.0, true),
                (20_000, 30_000, 4, 3.0 + 6.0 + 8.0 + 10.0, false),
            ]
        );
        let recent = windows.recent(at(BASE + 27_000), 3).unwrap();
        assert_eq!(summary(&recent, BASE), (0, 30_000, 9, 51.0, false));

        // The next event moves the horizon past [0, 10): final and beyond the 3 windows kept.
        assert_eq!(windows.add(at(BASE + 30_000), 12.0), Ok(OnTime));
        assert!(matches!(
            windows.window(at(BASE)),
            Err(QueryError::Evicted { .. })
        ));
        assert_eq!(windows.window(at(BASE + 10_000)).unwrap().count, 4);
    }

    #[test]
    fn an_event_past_the_allowed_bound_changes_nothing_and_cannot_move_the_watermark() {
        // Tumbling 10 s windows, watermark 2 s behind: the caller allows events up to 60 s on.
        let mut windows = EventTimeWindows::new(spec(10_000, 10_000, 2_000, 5_000, 3));
        let latest_allowed = at(BASE + 60_000);
        windows
            .add_within(at(BASE + 12_000), 1.0, latest_allowed)
            .unwrap();
        let before = windows.clone();
        for far in [BASE + 60_001, BASE + 3_600_000, 4_102_444_800_000] {
            let refused = windows.add_within(at(far), 1.0, latest_allowed);
            assert_eq!(
                refused,
                Err(AddError::Future {
                    event_time: at(far),
                    latest_allowed
                })
            );
            assert!(!refused.unwrap_err().is_late());
        }
        assert_eq!(
            windows, before,
            "nothing changed, the late counter included"
        );
        // Honest events after it are on time, as if it had never come.
        assert_eq!(
            windows.add_within(at(BASE + 13_000), 1.0, latest_allowed),
            Ok(Accepted::OnTime)
        );
        // At the bound exactly, accepted: the watermark goes no further than it less 2 s.
        assert_eq!(
            windows.add_within(latest_allowed, 1.0, latest_allowed),
            Ok(Accepted::OnTime)
        );
        assert_eq!(windows.watermark(), Some(at(BASE + 58_000)));
    }

    #[test]
    fn a_late_event_changes_only_the_counter() {
        let mut windows = EventTimeWindows::new(spec(10_000, 5_000, 0, 1_000, 2));
        windows.add(at(BASE + 30_000), 1.0).unwrap();
        let before = windows.clone();
        let refused = windows.add(at(BASE + 19_000), 2.0);
        assert_eq!(
            refused,
            Err(AddError::Late {
                event_time: at(BASE + 19_000),
                window_end: at(BASE + 25_000),
                watermark: at(BASE + 30_000),
            })
        );
        let expected = EventTimeWindows {
            late_count: 1,
            ..before
        };
        assert_eq!(windows, expected);
    }

    #[test]
    fn refused_values_change_nothing() {
        let mut windows = EventTimeWindows::new(spec(10_000, 10_000, 0, 0, 1));
        windows.add(at(BASE + 30_000), 1.0).unwrap();
        let before = windows.clone();
        for value in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 1e13, -1e300] {
            // On time or late, a bad value is refused for its value and not counted as late.
            for t in [BASE + 31_000, BASE] {
                let refused = windows.add(at(t), value);
                assert!(matches!(refused, Err(AddError::Value(_))), "{value} at {t}");
            }
        }
        assert_eq!(windows, before);
    }

    #[test]
    fn sliding_windows_skip_the_final_ones() {
        // 20 s windows every 5 s: each instant lies in 4 windows.
        let mut windows = EventTimeWindows::new(spec(20_000, 5_000, 0, 0, 2));
        for (t, value) in [(12_000, 1.0), (13_000, 2.0), (21_000, 4.0)] {
            assert_eq!(windows.add(at(BASE + t), value), Ok(Accepted::OnTime));
        }
        let containing: Vec<_> = windows
            .windows_containing(at(BASE + 12_000))
            .unwrap()
            .iter()
            .map(|w| summary(w, BASE))
            .collect();
        assert_eq!(
            containing,
            [
                (-5_000, 15_000, 2, 3.0, true),
                (0, 20_000, 2, 3.0, true),
                (5_000, 25_000, 3, 7.0, false),
                (10_000, 30_000, 3, 7.0, false),
            ]
        );
        // Behind the watermark (21 s) but its last window [15, 35) is open: accepted into the
        // open windows only, so the final [0, 20) keeps its aggregate.
        assert_eq!(windows.add(at(BASE + 17_000), 8.0), Ok(Accepted::OnTime));
        let all: Vec<_> = windows.windows().iter().map(|w| summary(w, BASE)).collect();
        assert_eq!(
            all,
            [
                (-5_000, 15_000, 2, 3.0, true),
                (0, 20_000, 2, 3.0, true),
                (5_000, 25_000, 4, 15.0, false),
                (10_000, 30_000, 4, 15.0, false),
                (15_000, 35_000, 2, 12.0, false),
                (20_000, 40_000, 1, 4.0, false),
            ]
        );
        // The window ending first among those containing 17 s is [0, 20).
        assert_eq!(
            summary(&windows.window_at(at(BASE + 17_000)).unwrap(), BASE).0,
            0
        );
        // 4 s: its last window [0, 20) is final.
        assert!(windows.add(at(BASE + 4_000), 1.0).unwrap_err().is_late());
    }

    #[test]
    fn recent_sums_the_latest_windows() {
        // Item popularity: one-minute windows, an hour of them queryable.
        let minute = 60_000;
        let mut windows = EventTimeWindows::new(spec(minute, minute, 0, 0, 60));
        // Minute m has m + 1 views.
        for m in 0..120 {
            for _ in 0..=m {
                windows.add(at(BASE + m * minute + 30_000), 1.0).unwrap();
            }
        }
        assert_eq!(windows.stored_windows(), 60);
        let now = at(BASE + 119 * minute + 45_000);
        assert_eq!(windows.recent(now, 1).unwrap().count, 120);
        assert_eq!(windows.recent(now, 1), windows.window_at(now));
        let hour = windows.recent(now, 60).unwrap();
        assert_eq!(hour.count, (61..=120).sum::<u64>());
        assert_eq!(hour.sum, hour.count as f64);
        assert_eq!(
            summary(&hour, BASE),
            (60 * minute, 120 * minute, 5430, 5430.0, false)
        );
        // Cold for an hour: nothing recent, and still an answer.
        let later = windows.recent(at(BASE + 180 * minute), 60).unwrap();
        assert_eq!((later.count, later.is_final), (0, false));
        // Half an hour back, the hour reaches evicted minutes.
        assert!(matches!(
            windows.recent(at(BASE + 89 * minute), 60),
            Err(QueryError::Evicted { .. })
        ));
        for n in [0, 61] {
            assert_eq!(
                windows.recent(now, n),
                Err(QueryError::WindowCount {
                    asked: n,
                    history: 60
                })
            );
        }
    }

    #[test]
    fn stored_windows_reach_but_never_exceed_the_bound() {
        // (size, slide, out-of-orderness, lateness, history, bound)
        let cases = [
            (9, 3, 2, 4, 2, 6),    // the history term: 2 · 9 / 3
            (10, 10, 5, 20, 1, 4), // the open term: ceil(35 / 10)
            (10, 10, 0, 0, 1, 1),  // tumbling without lateness keeps the current window only
            (12, 4, 0, 0, 1, 3),   // sliding without lateness: the windows of the latest instant
        ];
        for (size, slide, ooo, lateness, history, bound) in cases {
            let spec = spec(size, slide, ooo, lateness, history);
            assert_eq!(spec.max_stored_windows(), bound);
            let mut windows = EventTimeWindows::new(spec);
            let mut most = 0;
            for t in 0..500 {
                windows.add(at(BASE + t), 1.0).unwrap();
                most = most.max(windows.stored_windows() as u64);
            }
            assert_eq!(most, bound, "{spec:?}");
        }
    }

    #[test]
    fn extreme_times_do_not_panic() {
        let specs = [
            spec(20_000, 5_000, 1_000, 1_000, 2),
            spec(MAX_DURATION_MS, MAX_DURATION_MS, MAX_DURATION_MS, 0, 1),
            spec(1, 1, 0, 1_000, 1),
        ];
        let times = [
            DateTime::<Utc>::MIN_UTC,
            DateTime::<Utc>::MAX_UTC,
            at(0),
            DateTime::<Utc>::MIN_UTC,
            at(-1),
        ];
        for spec in specs {
            let mut windows = EventTimeWindows::new(spec);
            for &t in &times {
                let _ = windows.add(t, MAX_ABS_VALUE);
                for &q in &times {
                    let _ = windows.window_at(q);
                    let _ = windows.windows_containing(q);
                    let _ = windows.recent(q, 1);
                }
                let _ = windows.windows();
            }
            assert!(windows.watermark().is_some());
            assert!(windows.stored_windows() as u64 <= spec.max_stored_windows());
        }
    }

    #[test]
    fn the_state_round_trips_and_corruption_is_refused() {
        let mut windows = EventTimeWindows::new(spec(10_000, 5_000, 1_000, 5_000, 2));
        for (t, value) in [(1_000, 1.5), (7_000, -2.0), (12_000, 4.0), (3_000, 1.0)] {
            windows.add(at(BASE + t), value).unwrap();
        }
        let json = serde_json::to_value(&windows).unwrap();
        // [-5, 5) s holds 1 s only: when 3 s arrived (watermark 11 s) it was final (5 + 5 ≤ 11).
        assert_eq!(
            json["windows"][0],
            serde_json::json!([BASE - 5_000, 1, 1.5])
        );
        assert_eq!(
            serde_json::from_value::<EventTimeWindows>(json.clone()).unwrap(),
            windows
        );

        let corrupt = |edit: &dyn Fn(&mut serde_json::Value)| {
            let mut json = json.clone();
            edit(&mut json);
            serde_json::from_value::<EventTimeWindows>(json).is_err()
        };
        assert!(corrupt(&|j| j["windows"].as_array_mut().unwrap().reverse()));
        assert!(corrupt(
            &|j| j["windows"][0][0] = serde_json::json!(BASE + 1)
        ));
        assert!(corrupt(&|j| j["windows"][0][1] = serde_json::json!(0)));
        assert!(corrupt(&|j| j["windows"][0][2] = serde_json::json!(1e300)));
        assert!(corrupt(&|j| j["max_event_ms"] = serde_json::Value::Null));
        assert!(corrupt(&|j| j["spec"]["slide_ms"] = serde_json::json!(0)));
        assert!(corrupt(&|j| j["spec"]["history"] = serde_json::json!(0)));
    }

    /// An accepted event as the reference keeps it: with the watermark it met on arrival.
    struct Seen {
        t: i64,
        value: f64,
        watermark: Option<i64>,
    }

    /// The windows computed by brute force: every accepted event is kept, and a window's
    /// aggregate is recomputed by filtering them.
    struct Reference {
        size: i64,
        slide: i64,
        out_of_orderness: i64,
        lateness: i64,
        seen: Vec<Seen>,
        max_time: Option<i64>,
        late: u64,
        /// Start of every window an event was counted in.
        starts: BTreeSet<i64>,
    }

    #[derive(Debug, PartialEq)]
    enum Verdict {
        OnTime,
        WithinLateness,
        Late,
    }

    impl Reference {
        fn watermark(&self) -> Option<i64> {
            self.max_time.map(|max| max - self.out_of_orderness)
        }

        /// Every multiple of the slide `s` with `s ≤ t < s + size`, found by scanning.
        fn starts_containing(&self, t: i64) -> Vec<i64> {
            let k = t.div_euclid(self.slide);
            (k - self.size / self.slide - 1..=k + 1)
                .map(|k| k * self.slide)
                .filter(|&s| s <= t && t < s + self.size)
                .collect()
        }

        fn is_final(&self, start: i64, watermark: Option<i64>) -> bool {
            watermark.is_some_and(|w| start + self.size + self.lateness <= w)
        }

        fn push(&mut self, t: i64, value: f64) -> Verdict {
            let watermark = self.watermark();
            let open: Vec<i64> = self
                .starts_containing(t)
                .into_iter()
                .filter(|&s| !self.is_final(s, watermark))
                .collect();
            let verdict = if open.is_empty() {
                self.late += 1;
                Verdict::Late
            } else {
                self.starts.extend(&open);
                self.seen.push(Seen {
                    t,
                    value,
                    watermark,
                });
                if open
                    .iter()
                    .any(|&s| watermark.is_some_and(|w| s + self.size <= w))
                {
                    Verdict::WithinLateness
                } else {
                    Verdict::OnTime
                }
            };
            // Every event moves the maximum; a late one is below it anyway.
            self.max_time = Some(self.max_time.map_or(t, |max| max.max(t)));
            verdict
        }

        /// (count, sum) of the window starting at `start`: the events in it that found it
        /// still open.
        fn window(&self, start: i64) -> (u64, f64) {
            self.seen
                .iter()
                .filter(|e| start <= e.t && e.t < start + self.size)
                .filter(|e| !self.is_final(start, e.watermark))
                .fold((0, 0.0), |(count, sum), e| (count + 1, sum + e.value))
        }
    }

    /// Checks one window against the reference: equal if kept, final if evicted.
    fn check_window(windows: &EventTimeWindows, reference: &Reference, start: i64) -> bool {
        match windows.window(at(start)) {
            Ok(w) => {
                assert_eq!(w.start, at(start));
                // Same values added in the same order: the sums agree exactly.
                assert_eq!((w.count, w.sum), reference.window(start), "window {start}");
                assert_eq!(w.is_final, reference.is_final(start, reference.watermark()));
                true
            }
            Err(QueryError::Evicted { .. }) => {
                assert!(
                    reference.is_final(start, reference.watermark()),
                    "window {start} evicted while open"
                );
                false
            }
            Err(e) => panic!("window {start}: {e}"),
        }
    }

    #[test]
    fn random_out_of_order_streams_match_a_brute_force_reference() {
        // (size, slide, out-of-orderness, lateness, history, first event time, largest step)
        let cases: [(i64, i64, i64, i64, u32, i64, i64); 5] = [
            (10_000, 10_000, 0, 0, 1, BASE, 1_500),
            (10_000, 10_000, 3_000, 7_000, 6, BASE, 1_500),
            (20_000, 5_000, 2_000, 10_000, 4, -3_600_000, 1_500),
            (60_000, 15_000, 0, 30_000, 3, BASE, 5_000),
            (9, 3, 2, 4, 2, -50, 2),
        ];
        let mut rng = StdRng::seed_from_u64(20_240_601);
        for (size, slide, ooo, lateness, history, first, step) in cases {
            let spec = spec(size, slide, ooo, lateness, history);
            let mut windows = EventTimeWindows::new(spec);
            let mut reference = Reference {
                size,
                slide,
                out_of_orderness: ooo,
                lateness,
                seen: Vec::new(),
                max_time: None,
                late: 0,
                starts: BTreeSet::new(),
            };
            let reach = ooo + lateness + size;
            let mut clock = first;
            let mut verdicts = [0usize; 3];
            for i in 0..3000 {
                clock += rng.random_range(0..=step);
                let draw: f64 = rng.random();
                let delay = if draw < 0.55 {
                    rng.random_range(0..=ooo) // within the out-of-orderness bound
                } else if draw < 0.80 {
                    rng.random_range(0..=reach) // around the lateness limit
                } else if draw < 0.92 {
                    rng.random_range(0..=3 * reach) // mostly far beyond it
                } else {
                    0
                };
                let mut t = clock - delay;
                if rng.random_bool(0.15) {
                    // On a window boundary, or just before one.
                    t = t.div_euclid(slide) * slide - rng.random_range(0..=1);
                }
                let value = rng.random_range(-1000.0..1000.0);

                let expected = reference.push(t, value);
                let got = match windows.add(at(t), value) {
                    Ok(Accepted::OnTime) => Verdict::OnTime,
                    Ok(Accepted::WithinLateness) => Verdict::WithinLateness,
                    Err(AddError::Late { .. }) => Verdict::Late,
                    Err(e) => panic!("{e}"),
                };
                assert_eq!(got, expected, "{spec:?}: event {i} at {t}");
                verdicts[expected as usize] += 1;
                assert_eq!(windows.late_count(), reference.late);
                assert_eq!(windows.watermark(), reference.watermark().map(at));
                assert!(windows.stored_windows() as u64 <= spec.max_stored_windows());
                for start in reference.starts_containing(t) {
                    check_window(&windows, &reference, start);
                }

                if i % 13 == 0 {
                    // Recent queries at or after the latest event always have an answer.
                    let max = reference.max_time.unwrap();
                    let now = max + rng.random_range(0..=2 * size);
                    let end = now.div_euclid(slide) * slide + slide;
                    for n in 1..=history {
                        let recent = windows.recent(at(now), n).unwrap();
                        let (count, sum) = (1..=i64::from(n))
                            .map(|k| reference.window(end - k * size))
                            .fold((0, 0.0), |(c, s), (count, sum)| (c + count, s + sum));
                        assert_eq!(recent.count, count, "{spec:?}: recent({now}, {n})");
                        assert!((recent.sum - sum).abs() <= 1e-9 * (1.0 + sum.abs()));
                        assert_eq!(recent.end, at(end));
                    }
                }
                if i % 97 == 0 || i == 2999 {
                    // Every window any event was counted in: kept and equal, or final.
                    let kept: Vec<i64> = reference
                        .starts
                        .iter()
                        .copied()
                        .filter(|&start| check_window(&windows, &reference, start))
                        .collect();
                    let listed: Vec<i64> = windows
                        .windows()
                        .iter()
                        .map(|w| w.start.timestamp_millis())
                        .collect();
                    assert_eq!(listed, kept, "{spec:?}");
                }
            }
            assert!(
                verdicts[Verdict::Late as usize] > 100,
                "{spec:?}: {verdicts:?}"
            );
            assert!(
                verdicts[Verdict::OnTime as usize] > 1000,
                "{spec:?}: {verdicts:?}"
            );
            if lateness > 0 {
                assert!(
                    verdicts[Verdict::WithinLateness as usize] > 20,
                    "{spec:?}: {verdicts:?}"
                );
            }
        }
    }
}
