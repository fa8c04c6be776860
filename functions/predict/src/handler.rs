//! predict's pure logic: request validation and the compatibility check a new version must pass
//! before it may serve. No I/O.

use freshet::events::check_number;
use freshet::model::Manifest;
use freshet::serving::{BatchRequest, MAX_BATCH_ROWS, PredictRequest};

/// A request the predictor cannot answer, with the status code sent back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ServeError {
    pub code: usize,
    pub message: String,
}

impl ServeError {
    pub fn bad_request(message: impl Into<String>) -> ServeError {
        ServeError {
            code: 400,
            message: message.into(),
        }
    }

    pub fn unavailable(message: impl Into<String>) -> ServeError {
        ServeError {
            code: 503,
            message: message.into(),
        }
    }
}

/// What a request asks to score.
#[derive(Debug, Clone, PartialEq)]
pub enum Query {
    Features(Vec<f32>),
    Pair {
        user: freshet::ids::EntityId,
        item: freshet::ids::EntityId,
    },
}

pub fn parse_single(payload: &[u8]) -> Result<PredictRequest, ServeError> {
    serde_json::from_slice(payload)
        .map_err(|e| ServeError::bad_request(format!("invalid request: {e}")))
}

pub fn parse_batch(payload: &[u8]) -> Result<BatchRequest, ServeError> {
    let batch: BatchRequest = serde_json::from_slice(payload)
        .map_err(|e| ServeError::bad_request(format!("invalid batch request: {e}")))?;
    if batch.instances.is_empty() || batch.instances.len() > MAX_BATCH_ROWS {
        return Err(ServeError::bad_request(format!(
            "a batch holds 1 to {MAX_BATCH_ROWS} instances, this one {}",
            batch.instances.len()
        )));
    }
    Ok(batch)
}

/// Checks a request against the model's feature count and turns it into a query.
pub fn query_for(request: &PredictRequest, n_features: usize) -> Result<Query, ServeError> {
    match (&request.features, &request.user, &request.item) {
        (Some(values), None, None) => Ok(Query::Features(feature_row(values, n_features)?)),
        (None, Some(user), Some(item)) => Ok(Query::Pair {
            user: user.clone(),
            item: item.clone(),
        }),
        _ => Err(ServeError::bad_request(
            "give either \"features\", or both \"user\" and \"item\"",
        )),
    }
}

/// Checks a raw feature vector (count and range) and converts it for the model.
pub fn feature_row(values: &[f64], n_features: usize) -> Result<Vec<f32>, ServeError> {
    if values.len() != n_features {
        return Err(ServeError::bad_request(format!(
            "features has {} values, the model takes {n_features}",
            values.len()
        )));
    }
    for (i, value) in values.iter().enumerate() {
        check_number(&format!("features[{i}]"), *value).map_err(|r| ServeError::bad_request(r.to_string()))?;
    }
    Ok(values.iter().map(|&v| v as f32).collect())
}

/// Whether a version may replace the one serving: its schema must be one this predictor can
/// build features for (the bookstore schema it was compiled with), or a raw vector schema.
pub fn check_compatible(manifest: &Manifest, scorer_features: usize) -> Result<(), String> {
    if manifest.schema.n_features() != scorer_features {
        return Err(format!(
            "manifest lists {} features but the model takes {scorer_features}",
            manifest.schema.n_features()
        ));
    }
    if manifest.schema.name == freshet::features::SCHEMA_NAME
        && manifest.schema != freshet::features::schema()
    {
        return Err(format!(
            "feature schema {} v{} differs from the predictor's v{}",
            manifest.schema.name,
            manifest.schema.version,
            freshet::features::SCHEMA_VERSION
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: &str) -> PredictRequest {
        parse_single(json.as_bytes()).unwrap()
    }

    #[test]
    fn accepts_a_vector_or_a_pair() {
        assert_eq!(
            query_for(&request(r#"{"features":[1,2]}"#), 2),
            Ok(Query::Features(vec![1.0, 2.0]))
        );
        assert!(matches!(
            query_for(&request(r#"{"user":"u1","item":"b1"}"#), 7),
            Ok(Query::Pair { .. })
        ));
    }

    #[test]
    fn refuses_what_it_cannot_score() {
        for (json, n) in [
            (r#"{"features":[1,2,3]}"#, 2),
            (r#"{"features":[1e300, 1]}"#, 2),
            (r#"{"user":"u1"}"#, 2),
            (r#"{"features":[1,2],"user":"u1","item":"b1"}"#, 2),
            (r#"{}"#, 2),
        ] {
            let err = query_for(&request(json), n).unwrap_err();
            assert_eq!(err.code, 400, "{json}: {err}");
        }
        assert_eq!(parse_single(b"{\"nope\":1}").unwrap_err().code, 400);
        assert_eq!(parse_single(b"\xff").unwrap_err().code, 400);
        assert_eq!(parse_batch(br#"{"instances":[]}"#).unwrap_err().code, 400);
    }
}
