//! The two text formats `/metrics` speaks, and which one a scraper gets.
//!
//! The registry encodes OpenMetrics 1.0 (`# EOF` at the end; a counter family `x` whose sample is
//! `x_total`). Served under its own content type, Prometheus parses it with its OpenMetrics
//! parser and every counter keeps its type. Served as `text/plain; version=0.0.4`, Prometheus'
//! classic parser would look for samples named as the `# TYPE` line says (`x`), find `x_total`
//! instead, and record every counter as "unknown".
//!
//! So the format follows the `Accept` header ([`negotiate`]): Prometheus asks for OpenMetrics
//! first by default (its `scrape_protocols`) and gets it; a scraper that asks only for the
//! classic format (an older agent, Prometheus limited to `PrometheusText0.0.4`) or asks for
//! nothing in particular (`curl`, a browser) gets the classic format, translated by
//! [`to_classic`], whose `# TYPE` lines name the samples that follow.

/// A text format of the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0.0 (`application/openmetrics-text`).
    OpenMetrics,
    /// The Prometheus text format 0.0.4 (`text/plain`).
    Classic,
}

impl Format {
    /// The `Content-Type` of a body in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Classic => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// The format to answer a request whose `Accept` header is `accept`: the one it weighs highest
/// (its `q`), OpenMetrics on a tie between the two named explicitly, and the classic format when
/// it names neither (no header, `*/*`, `text/*`) or refuses both.
pub fn negotiate(accept: Option<&str>) -> Format {
    let mut open_metrics: Option<f32> = None;
    let mut classic: Option<f32> = None;
    for range in accept.unwrap_or_default().split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default().to_ascii_lowercase();
        let quality = parts
            .filter_map(|param| param.split_once('='))
            .find(|(name, _)| name.trim().eq_ignore_ascii_case("q"))
            .and_then(|(_, value)| value.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        let slot = match media.as_str() {
            "application/openmetrics-text" => &mut open_metrics,
            "text/plain" => &mut classic,
            _ => continue,
        };
        *slot = Some(slot.map_or(quality, |q: f32| q.max(quality)));
    }
    match (open_metrics, classic) {
        (Some(om), Some(text)) if om > 0.0 && om >= text => Format::OpenMetrics,
        (Some(om), None) if om > 0.0 => Format::OpenMetrics,
        _ => Format::Classic,
    }
}

/// Translates an OpenMetrics text exposition into the classic Prometheus text format 0.0.4: a
/// counter's `# TYPE` and `# HELP` lines name its `_total` series, an info family its `_info`
/// series as a gauge, `unknown` becomes `untyped`; `# UNIT`, `# EOF`, `_created` series and
/// exemplars have no classic form and are left out; a timestamp in seconds becomes one in
/// milliseconds.
pub fn to_classic(open_metrics: &str) -> String {
    let mut out = String::with_capacity(open_metrics.len());
    // A family's HELP line comes before its TYPE line, which says what the family is called in
    // the classic format: it waits until then.
    let mut help: Option<(&str, &str)> = None;
    // The current family: its name and type.
    let mut family: (&str, &str) = ("", "");
    for line in open_metrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
            help = Some((name, text));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            family = (name, kind);
            let (classic_name, classic_kind) = classic_family(name, kind);
            if let Some((_, text)) = help.take().filter(|(n, _)| *n == name) {
                out.push_str(&format!("# HELP {classic_name} {text}\n"));
            }
            out.push_str(&format!("# TYPE {classic_name} {classic_kind}\n"));
        } else if line.starts_with('#') || line.is_empty() {
            // `# UNIT`, `# EOF` and any other comment.
        } else if let Some(sample) = classic_sample(line, family) {
            out.push_str(&sample);
            out.push('\n');
        }
    }
    out
}

/// The classic name and type of an OpenMetrics family.
fn classic_family(name: &str, kind: &str) -> (String, &'static str) {
    match kind {
        "counter" => (format!("{name}_total"), "counter"),
        "gauge" => (name.to_string(), "gauge"),
        "histogram" => (name.to_string(), "histogram"),
        "summary" => (name.to_string(), "summary"),
        "info" => (format!("{name}_info"), "gauge"),
        "stateset" => (name.to_string(), "gauge"),
        _ => (name.to_string(), "untyped"),
    }
}

/// One sample line in the classic format: without its exemplar, its timestamp in milliseconds;
/// `None` for a `_created` series, which the classic format does not have.
fn classic_sample(line: &str, (family, kind): (&str, &str)) -> Option<String> {
    let name_end = line.find(['{', ' ']).unwrap_or(line.len());
    let name = &line[..name_end];
    let created = name
        .strip_suffix("_created")
        .is_some_and(|base| base == family && matches!(kind, "counter" | "histogram" | "summary"));
    if created {
        return None;
    }
    let labels_end = if line[name_end..].starts_with('{') {
        name_end + label_set_len(&line[name_end..])?
    } else {
        name_end
    };
    let series = &line[..labels_end];
    // After the labels: ` value [timestamp] [# exemplar]`.
    let rest = line[labels_end..].split(" # ").next().unwrap_or_default();
    let mut fields = rest.split_whitespace();
    let value = fields.next()?;
    Some(match fields.next() {
        Some(seconds) => {
            let millis = seconds
                .parse::<f64>()
                .ok()
                .map(|s| (s * 1000.0).round() as i64);
            match millis {
                Some(millis) => format!("{series} {value} {millis}"),
                None => format!("{series} {value}"),
            }
        }
        None => format!("{series} {value}"),
    })
}

/// The length of the label set `{...}` that `text` starts with, up to and including its `}`
/// (label values may hold `}`, `"` and `\` escaped).
fn label_set_len(text: &str) -> Option<usize> {
    let mut in_value = false;
    let mut escaped = false;
    for (at, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_value => escaped = true,
            '"' => in_value = !in_value,
            '}' if !in_value => return Some(at + 1),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROMETHEUS_2: &str = "application/openmetrics-text;version=1.0.0;q=0.5,\
        application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
    const PROMETHEUS_3: &str = "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,\
        application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,\
        text/plain;version=0.0.4;q=0.2,*/*;q=0.1";

    #[test]
    fn prometheus_gets_open_metrics_and_others_the_classic_format() {
        assert_eq!(negotiate(Some(PROMETHEUS_2)), Format::OpenMetrics);
        assert_eq!(negotiate(Some(PROMETHEUS_3)), Format::OpenMetrics);
        assert_eq!(
            negotiate(Some("application/openmetrics-text")),
            Format::OpenMetrics
        );
        // Prometheus told to scrape the classic format only.
        assert_eq!(
            negotiate(Some("text/plain;version=0.0.4;q=0.5,*/*;q=0.1")),
            Format::Classic
        );
        assert_eq!(negotiate(None), Format::Classic);
        assert_eq!(negotiate(Some("*/*")), Format::Classic);
        assert_eq!(negotiate(Some("text/html,*/*;q=0.8")), Format::Classic);
        assert_eq!(
            negotiate(Some("text/plain;q=0.9, application/openmetrics-text;q=0.2")),
            Format::Classic
        );
        assert_eq!(
            negotiate(Some("application/openmetrics-text;q=0")),
            Format::Classic
        );
    }

    #[test]
    fn counters_are_named_by_their_total_series_in_the_classic_format() {
        let open_metrics = "# HELP freshet_messages_in Messages received.\n\
            # TYPE freshet_messages_in counter\n\
            freshet_messages_in_total{function=\"train\"} 3\n\
            freshet_messages_in_created{function=\"train\"} 1700000000.5\n\
            # HELP freshet_ready 1 when ready.\n\
            # TYPE freshet_ready gauge\n\
            freshet_ready{function=\"train\"} 1\n\
            # HELP freshet_batch_seconds Time per batch.\n\
            # TYPE freshet_batch_seconds histogram\n\
            # UNIT freshet_batch_seconds seconds\n\
            freshet_batch_seconds_sum 0.5\n\
            freshet_batch_seconds_count 2\n\
            freshet_batch_seconds_bucket{le=\"0.1\"} 1 # {trace_id=\"a\"} 0.05 1700000000.0\n\
            freshet_batch_seconds_bucket{le=\"+Inf\"} 2\n\
            # HELP build Build.\n\
            # TYPE build info\n\
            build_info{version=\"1\"} 1\n\
            # TYPE odd unknown\n\
            odd{text=\"a } b # {c} \\\" d\"} 7 1700000000.25\n\
            # EOF\n";
        let expected = "# HELP freshet_messages_in_total Messages received.\n\
            # TYPE freshet_messages_in_total counter\n\
            freshet_messages_in_total{function=\"train\"} 3\n\
            # HELP freshet_ready 1 when ready.\n\
            # TYPE freshet_ready gauge\n\
            freshet_ready{function=\"train\"} 1\n\
            # HELP freshet_batch_seconds Time per batch.\n\
            # TYPE freshet_batch_seconds histogram\n\
            freshet_batch_seconds_sum 0.5\n\
            freshet_batch_seconds_count 2\n\
            freshet_batch_seconds_bucket{le=\"0.1\"} 1\n\
            freshet_batch_seconds_bucket{le=\"+Inf\"} 2\n\
            # HELP build_info Build.\n\
            # TYPE build_info gauge\n\
            build_info{version=\"1\"} 1\n\
            # TYPE odd untyped\n\
            odd{text=\"a } b # {c} \\\" d\"} 7 1700000000250\n";
        assert_eq!(to_classic(open_metrics), expected);
    }
}
