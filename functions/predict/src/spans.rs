//! What the span of an answered request says, when span export is on and the request's trace is
//! sampled: the model and the version that answered, or the error replied. The span itself (kind
//! SERVER, named `predict <endpoint>`) is started and ended by the NATS service and the HTTP
//! routes around the answer.

use freshet::ids::ModelName;
use freshet::serving::{BatchResponse, PredictResponse, RecommendResponse};
use freshet::telemetry::Span;

use crate::handler::ServeError;

/// An answer that names the version that gave it.
pub trait Answered {
    fn version(&self) -> u64;
}

impl Answered for PredictResponse {
    fn version(&self) -> u64 {
        self.version
    }
}

impl Answered for BatchResponse {
    fn version(&self) -> u64 {
        self.version
    }
}

impl Answered for RecommendResponse {
    fn version(&self) -> u64 {
        self.version
    }
}

/// Records on `span` (if any) how `model`'s request was answered: by a version, or with an
/// error (then the span's status is that error).
pub fn answered(span: &mut Option<Span>, model: &ModelName, outcome: Result<u64, &ServeError>) {
    let Some(span) = span else {
        return;
    };
    span.set("freshet.model", model.as_str());
    match outcome {
        Ok(version) => span.set("freshet.model.version", version),
        Err(err) => {
            span.set("freshet.error.code", err.code as u64);
            span.fail(err.message.as_str());
        }
    }
}

#[cfg(test)]
mod tests {
    use freshet::telemetry::{SpanKind, Status, Value};
    use freshet::trace::TraceContext;

    use super::*;

    fn span() -> Option<Span> {
        let trace = TraceContext::root();
        Some(Span::new(
            &trace,
            "predict single",
            SpanKind::Server,
            std::time::SystemTime::now(),
        ))
    }

    #[test]
    fn names_the_version_or_the_error() {
        let model = ModelName::parse("bookstore").unwrap();
        let mut ok = span();
        answered(&mut ok, &model, Ok(7));
        let ok = ok.unwrap();
        assert_eq!(ok.status, Status::Unset);
        assert!(
            ok.attributes
                .contains(&("freshet.model", Value::from("bookstore")))
        );
        assert!(
            ok.attributes
                .contains(&("freshet.model.version", Value::Int(7)))
        );
        let mut refused = span();
        answered(
            &mut refused,
            &model,
            Err(&ServeError::bad_request("no row")),
        );
        let refused = refused.unwrap();
        assert_eq!(refused.status, Status::Error("no row".to_string()));
        assert!(
            refused
                .attributes
                .contains(&("freshet.error.code", Value::Int(400)))
        );
        let mut none = None;
        answered(&mut none, &model, Ok(1));
        assert!(none.is_none());
    }
}
