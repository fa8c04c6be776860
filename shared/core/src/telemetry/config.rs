//! Span export settings, from the standard OpenTelemetry environment variables (each also a
//! flag), checked at start-up: an endpoint that is not an http(s) URL, a malformed header list or
//! a protocol freshet does not speak stops the function before it connects.

use std::time::Duration;

use clap::Args;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use super::span::Value;

/// The path OTLP/HTTP receivers take traces on, below a base endpoint.
const TRACES_PATH: &str = "v1/traces";

/// How spans are exported to an OpenTelemetry collector (OTLP over HTTP, JSON encoding). Off
/// unless an endpoint is set.
#[derive(Debug, Clone, Default, Args)]
pub struct OtlpArgs {
    /// OTLP/HTTP endpoint spans are POSTed to, as is (e.g. http://collector:4318/v1/traces);
    /// wins over OTEL_EXPORTER_OTLP_ENDPOINT. Without either, no span is exported
    #[arg(
        long = "otlp-traces-endpoint",
        env = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    )]
    pub traces_endpoint: Option<String>,
    /// OTLP/HTTP base URL of a collector (e.g. http://collector:4318); spans are POSTed to
    /// <base>/v1/traces. Only spans of sampled traces (the producer's traceparent flag 01) are sent
    #[arg(long = "otlp-endpoint", env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub endpoint: Option<String>,
    /// Headers sent with every export, comma-separated key=value (values percent-encoded), e.g.
    /// an API key
    #[arg(
        long = "otlp-headers",
        env = "OTEL_EXPORTER_OTLP_HEADERS",
        hide_env_values = true
    )]
    pub headers: Option<String>,
    /// Transport of OTLP export: only http/json is spoken (grpc is refused; http/protobuf is
    /// answered with JSON, which OTLP/HTTP receivers take too)
    #[arg(long = "otlp-protocol", env = "OTEL_EXPORTER_OTLP_PROTOCOL")]
    pub protocol: Option<String>,
    /// service.name of the exported spans [default: freshet-<function>]
    #[arg(long = "otel-service-name", env = "OTEL_SERVICE_NAME")]
    pub service_name: Option<String>,
    /// More resource attributes of the exported spans, comma-separated key=value
    #[arg(long = "otel-resource-attributes", env = "OTEL_RESOURCE_ATTRIBUTES")]
    pub resource_attributes: Option<String>,
    /// Longest time, in milliseconds, a span waits to be exported
    #[arg(
        long = "otel-bsp-schedule-delay",
        env = "OTEL_BSP_SCHEDULE_DELAY",
        default_value_t = 1000
    )]
    pub schedule_delay_ms: u64,
    /// Most spans in one export
    #[arg(
        long = "otel-bsp-max-export-batch-size",
        env = "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
        default_value_t = 512
    )]
    pub max_export_batch_size: usize,
    /// Most spans waiting to be exported; more are dropped (and counted), never waited for
    #[arg(
        long = "otel-bsp-max-queue-size",
        env = "OTEL_BSP_MAX_QUEUE_SIZE",
        default_value_t = 2048
    )]
    pub max_queue_size: usize,
}

/// A setting that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{variable}={value:?} is not an http:// or https:// URL: {reason}")]
    InvalidEndpoint {
        variable: &'static str,
        value: String,
        reason: String,
    },
    #[error("{variable}: {entry:?} is not a key=value pair: {reason}")]
    InvalidPair {
        variable: &'static str,
        entry: String,
        reason: String,
    },
    #[error(
        "OTEL_EXPORTER_OTLP_PROTOCOL={0:?}: freshet exports spans over OTLP/HTTP with JSON; set \
         http/json and point the endpoint at the collector's OTLP/HTTP port (4318 by default)"
    )]
    UnsupportedProtocol(String),
    #[error("{variable} must be positive")]
    NotPositive { variable: &'static str },
    #[error("cannot set up the HTTP client spans are sent with: {0}")]
    HttpClient(#[source] reqwest::Error),
}

/// Export settings, checked.
#[derive(Debug, Clone)]
pub struct ExportConfig {
    /// Where spans are POSTed.
    pub endpoint: reqwest::Url,
    pub headers: HeaderMap,
    pub service_name: String,
    /// Resource attributes besides the service name, instance and SDK.
    pub resource_attributes: Vec<(String, Value)>,
    pub schedule_delay: Duration,
    pub max_export_batch_size: usize,
    pub max_queue_size: usize,
}

/// A setting given as an empty string is unset, as the OpenTelemetry specification says.
fn given(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

impl OtlpArgs {
    /// The checked settings of `function`'s exporter; `None` when no endpoint is set (export off).
    pub fn resolve(&self, function: &str) -> Result<Option<ExportConfig>, ConfigError> {
        let endpoint = match (given(&self.traces_endpoint), given(&self.endpoint)) {
            (Some(full), _) => endpoint_url("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", full, false)?,
            (None, Some(base)) => endpoint_url("OTEL_EXPORTER_OTLP_ENDPOINT", base, true)?,
            (None, None) => return Ok(None),
        };
        if let Some(protocol) = given(&self.protocol)
            && protocol != "http/json"
            && protocol != "http/protobuf"
        {
            return Err(ConfigError::UnsupportedProtocol(protocol.to_string()));
        }
        for (variable, value) in [
            ("OTEL_BSP_SCHEDULE_DELAY", self.schedule_delay_ms as usize),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", self.max_export_batch_size),
            ("OTEL_BSP_MAX_QUEUE_SIZE", self.max_queue_size),
        ] {
            if value == 0 {
                return Err(ConfigError::NotPositive { variable });
            }
        }
        let mut headers = HeaderMap::new();
        for (key, value) in pairs("OTEL_EXPORTER_OTLP_HEADERS", given(&self.headers))? {
            let invalid = |reason: String| ConfigError::InvalidPair {
                variable: "OTEL_EXPORTER_OTLP_HEADERS",
                entry: key.clone(),
                reason,
            };
            let name =
                HeaderName::from_bytes(key.as_bytes()).map_err(|e| invalid(e.to_string()))?;
            let value = HeaderValue::from_str(&value).map_err(|e| invalid(e.to_string()))?;
            headers.append(name, value);
        }
        let resource_attributes =
            pairs("OTEL_RESOURCE_ATTRIBUTES", given(&self.resource_attributes))?
                .into_iter()
                .filter(|(key, _)| key != "service.name")
                .map(|(key, value)| (key, Value::String(value)))
                .collect();
        Ok(Some(ExportConfig {
            endpoint,
            headers,
            service_name: given(&self.service_name)
                .map_or_else(|| format!("freshet-{function}"), str::to_string),
            resource_attributes,
            schedule_delay: Duration::from_millis(self.schedule_delay_ms),
            // The queue is never smaller than one export.
            max_export_batch_size: self.max_export_batch_size.min(self.max_queue_size),
            max_queue_size: self.max_queue_size,
        }))
    }
}

/// The URL spans go to: `value` as is, or below it at `v1/traces` for a base endpoint.
fn endpoint_url(
    variable: &'static str,
    value: &str,
    base: bool,
) -> Result<reqwest::Url, ConfigError> {
    let invalid = |reason: String| ConfigError::InvalidEndpoint {
        variable,
        value: value.to_string(),
        reason,
    };
    let mut url = reqwest::Url::parse(value).map_err(|e| invalid(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(format!("the scheme is {:?}", url.scheme())));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("there is no host".to_string()));
    }
    if base {
        let path = url.path().trim_end_matches('/').to_string();
        url.set_path(&format!("{path}/{TRACES_PATH}"));
    }
    Ok(url)
}

/// A comma-separated list of `key=value` (the W3C baggage form the OpenTelemetry variables use):
/// blanks around entries, keys and values are trimmed, values are percent-decoded.
fn pairs(variable: &'static str, list: Option<&str>) -> Result<Vec<(String, String)>, ConfigError> {
    let Some(list) = list else {
        return Ok(Vec::new());
    };
    list.split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            let invalid = |reason: &str| ConfigError::InvalidPair {
                variable,
                entry: entry.to_string(),
                reason: reason.to_string(),
            };
            let (key, value) = entry.split_once('=').ok_or_else(|| invalid("no '='"))?;
            let key = key.trim();
            if key.is_empty() {
                return Err(invalid("the key is empty"));
            }
            let value = percent_encoding::percent_decode_str(value.trim())
                .decode_utf8()
                .map_err(|_| invalid("the value is not UTF-8 once decoded"))?;
            Ok((key.to_string(), value.into_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        otlp: OtlpArgs,
    }

    fn args(flags: &[&str]) -> OtlpArgs {
        Cli::try_parse_from(std::iter::once("f").chain(flags.iter().copied()))
            .unwrap()
            .otlp
    }

    fn resolved(flags: &[&str]) -> Result<Option<ExportConfig>, ConfigError> {
        args(flags).resolve("train")
    }

    #[test]
    fn off_without_an_endpoint() {
        assert!(resolved(&[]).unwrap().is_none());
        assert!(
            resolved(&["--otlp-endpoint", " ", "--otlp-headers", "a=b"])
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn a_base_endpoint_gets_the_traces_path_and_a_full_one_wins() {
        for (base, expected) in [
            ("http://127.0.0.1:4318", "http://127.0.0.1:4318/v1/traces"),
            ("http://collector:4318/", "http://collector:4318/v1/traces"),
            (
                "https://otlp.example/otlp/",
                "https://otlp.example/otlp/v1/traces",
            ),
        ] {
            let config = resolved(&["--otlp-endpoint", base]).unwrap().unwrap();
            assert_eq!(config.endpoint.as_str(), expected);
        }
        let config = resolved(&[
            "--otlp-endpoint",
            "http://base:4318",
            "--otlp-traces-endpoint",
            "http://full:9999/custom",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(config.endpoint.as_str(), "http://full:9999/custom");
        assert_eq!(config.service_name, "freshet-train");
        assert_eq!(config.schedule_delay, Duration::from_secs(1));
        assert_eq!(config.max_export_batch_size, 512);
    }

    #[test]
    fn an_invalid_endpoint_is_a_clear_error() {
        for bad in ["collector:4318", "ftp://collector/", "not a url", "http://"] {
            let err = resolved(&["--otlp-endpoint", bad]).unwrap_err();
            assert!(
                matches!(err, ConfigError::InvalidEndpoint { .. }),
                "{bad}: {err}"
            );
            assert!(
                err.to_string().contains("OTEL_EXPORTER_OTLP_ENDPOINT"),
                "{err}"
            );
        }
        let err = resolved(&[
            "--otlp-endpoint",
            "http://c:4317",
            "--otlp-protocol",
            "grpc",
        ])
        .unwrap_err();
        assert!(matches!(err, ConfigError::UnsupportedProtocol(_)), "{err}");
    }

    #[test]
    fn reads_headers_resource_attributes_and_the_service_name() {
        let config = resolved(&[
            "--otlp-endpoint",
            "http://c:4318",
            "--otlp-headers",
            " api-key = s%3Dcret , x-tenant=t1,",
            "--otel-service-name",
            "bookshop-train",
            "--otel-resource-attributes",
            "deployment.environment=staging,service.name=ignored",
            "--otel-bsp-schedule-delay",
            "250",
            "--otel-bsp-max-export-batch-size",
            "4096",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(config.headers["api-key"], "s=cret");
        assert_eq!(config.headers["x-tenant"], "t1");
        assert_eq!(config.service_name, "bookshop-train");
        assert_eq!(
            config.resource_attributes,
            vec![(
                "deployment.environment".to_string(),
                Value::String("staging".to_string())
            )]
        );
        assert_eq!(config.schedule_delay, Duration::from_millis(250));
        assert_eq!(
            config.max_export_batch_size, 2048,
            "capped at the queue size"
        );
        for bad in ["novalue", "=v", "bad header=v"] {
            let err =
                resolved(&["--otlp-endpoint", "http://c:4318", "--otlp-headers", bad]).unwrap_err();
            assert!(
                matches!(err, ConfigError::InvalidPair { .. }),
                "{bad}: {err}"
            );
        }
    }
}
