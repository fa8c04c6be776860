//! predict's pure logic: request validation and the compatibility check a new version must pass
//! before it may serve. No I/O.

use freshet::events::check_numbers;
use freshet::examples::FeatureSchema;
use freshet::serving::{
    BatchRequest, MAX_BATCH_ROWS, MAX_RECOMMENDATIONS, PredictRequest, Variant,
};

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
    check_numbers("features", values).map_err(|r| ServeError::bad_request(r.to_string()))?;
    Ok(values.iter().map(|&v| v as f32).collect())
}

/// FNV-1a, 64 bits: a hash that is the same on every machine and release, so an entity lands
/// in the same A/B bucket on every replica and after every restart.
pub fn stable_hash(text: &str) -> u64 {
    freshet::stats::hash::fnv1a(text)
}

/// Which variant answers a request: the candidate for a `candidate_share` of entities (by a
/// consistent hash of the entity id) when a candidate is loaded, the live version otherwise.
/// Requests without an entity always get the live version.
pub fn choose_variant(
    entity: Option<&str>,
    candidate_share: f64,
    candidate_loaded: bool,
) -> Variant {
    match entity {
        Some(entity) if candidate_loaded && candidate_share > 0.0 => {
            let bucket = (stable_hash(entity) % 10_000) as f64 / 10_000.0;
            if bucket < candidate_share {
                Variant::Candidate
            } else {
                Variant::Live
            }
        }
        _ => Variant::Live,
    }
}

/// Checks a recommend request and returns the number of items wanted.
pub fn recommend_size(top: Option<usize>) -> Result<usize, ServeError> {
    match top.unwrap_or(10) {
        n @ 1..=MAX_RECOMMENDATIONS => Ok(n),
        n => Err(ServeError::bad_request(format!(
            "top is {n}; ask for 1 to {MAX_RECOMMENDATIONS} items"
        ))),
    }
}

/// Indexes of the `n` highest scores, best first (ties keep catalogue order).
pub fn top_n(scores: &[f32], n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    order.truncate(n);
    order
}

/// Whether a version may replace the one serving: its schema must be one this predictor can
/// build features for (the bookstore schema it was compiled with: same version, same features in
/// the same order), or a raw vector schema. How drift watches the features (the schema's
/// monitoring plan) does not change what they are, so it is not compared. That the model takes
/// as many features as its schema lists, loading the artifact has checked.
pub fn check_compatible(schema: &FeatureSchema) -> Result<(), String> {
    let bookstore = freshet_features::bookstore::schema();
    if schema.name == bookstore.name
        && (schema.version != bookstore.version || schema.features != bookstore.features)
    {
        return Err(format!(
            "feature schema {} v{} differs from the predictor's v{}",
            schema.name,
            schema.version,
            freshet_features::bookstore::SCHEMA_VERSION
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_is_compatible_with_the_bookstore_schema_or_a_raw_vector_schema() {
        let bookstore = freshet_features::bookstore::schema();
        assert_eq!(check_compatible(&bookstore), Ok(()));
        let older = FeatureSchema {
            version: bookstore.version - 1,
            ..bookstore.clone()
        };
        // A manifest written before monitoring plans existed serves as before.
        let unplanned = FeatureSchema {
            monitoring: Vec::new(),
            ..bookstore.clone()
        };
        assert_eq!(check_compatible(&unplanned), Ok(()));
        let refusal = check_compatible(&older).unwrap_err();
        assert!(
            refusal.contains("differs from the predictor's"),
            "{refusal}"
        );
        let reordered = FeatureSchema {
            features: bookstore.features.iter().rev().cloned().collect(),
            ..bookstore
        };
        assert!(check_compatible(&reordered).is_err());
        let raw = FeatureSchema {
            name: "raw".to_string(),
            version: 0,
            features: vec!["f0".to_string(), "f1".to_string(), "f2".to_string()],
            monitoring: Vec::new(),
        };
        assert_eq!(check_compatible(&raw), Ok(()));
    }

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
    fn the_split_is_consistent_and_close_to_the_share() {
        assert_eq!(stable_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(
            stable_hash("a"),
            0xaf63_dc4c_8601_ec8c,
            "the published FNV-1a test vector"
        );
        let users: Vec<String> = (0..10_000).map(|i| format!("u{i}")).collect();
        let candidate = users
            .iter()
            .filter(|u| choose_variant(Some(u), 0.2, true) == Variant::Candidate)
            .count();
        assert!(
            (1_800..2_200).contains(&candidate),
            "{candidate} of 10000 with a 20% share"
        );
        for user in &users[..100] {
            assert_eq!(
                choose_variant(Some(user), 0.2, true),
                choose_variant(Some(user), 0.2, true)
            );
        }
        assert_eq!(
            choose_variant(Some("u1"), 1.0, false),
            Variant::Live,
            "no candidate loaded"
        );
        assert_eq!(
            choose_variant(None, 1.0, true),
            Variant::Live,
            "no entity to hash"
        );
        assert_eq!(choose_variant(Some("u1"), 0.0, true), Variant::Live);
    }

    #[test]
    fn recommends_the_best_first() {
        assert_eq!(top_n(&[0.1, 0.9, 0.5, 0.9], 3), vec![1, 3, 2]);
        assert_eq!(top_n(&[0.1], 5), vec![0]);
        assert_eq!(recommend_size(None), Ok(10));
        assert_eq!(recommend_size(Some(0)).unwrap_err().code, 400);
        assert_eq!(
            recommend_size(Some(MAX_RECOMMENDATIONS + 1))
                .unwrap_err()
                .code,
            400
        );
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
