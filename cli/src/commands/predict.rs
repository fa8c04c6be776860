//! `freshet predict`: asks a model's predictors for one score over NATS request/reply, with either
//! a ready feature vector or a (user, item) pair whose features the predictor looks up.

use std::time::Duration;

use anyhow::Context;
use clap::Args;
use freshet::ids::{EntityId, ModelName};
use freshet::serving::{PredictRequest, PredictResponse, call, endpoint_single};

use super::{GlobalArgs, connect, emit, emit_json, key_values};

/// Arguments of `freshet predict`.
#[derive(Debug, Clone, Args)]
pub struct PredictArgs {
    /// Model name
    pub model: ModelName,
    /// Feature vector, comma-separated, in the model's schema order
    #[arg(
        long = "features",
        value_delimiter = ',',
        value_parser = parse_feature,
        allow_hyphen_values = true,
        required_unless_present = "predict_user",
        conflicts_with_all = ["predict_user", "predict_item"]
    )]
    pub features: Option<Vec<f64>>,
    /// User whose features the predictor reads from FEATURES (with --item)
    // The ids differ from the field names: the global --nats-user already has the id "user".
    #[arg(
        id = "predict_user",
        long = "user",
        value_name = "USER",
        requires = "predict_item"
    )]
    pub user: Option<EntityId>,
    /// Item whose features the predictor reads from FEATURES (with --user)
    #[arg(
        id = "predict_item",
        long = "item",
        value_name = "ITEM",
        requires = "predict_user"
    )]
    pub item: Option<EntityId>,
    /// How long to wait for an answer
    #[arg(long = "timeout", default_value = "2s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// A feature value a model may see: finite and within the event contract's range. JSON has no
/// NaN, so letting one through would send `null` and earn a confusing refusal.
fn parse_feature(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    freshet::events::check_number("feature", value).map_err(|rejection| rejection.detail)?;
    Ok(value)
}

impl PredictArgs {
    /// The request these arguments describe.
    pub fn request(&self) -> PredictRequest {
        PredictRequest {
            features: self.features.clone(),
            user: self.user.clone(),
            item: self.item.clone(),
        }
    }
}

/// Runs `freshet predict`.
pub async fn run(global: &GlobalArgs, args: &PredictArgs) -> anyhow::Result<()> {
    let nats = connect(global).await?;
    let subject = endpoint_single(&nats.subjects, &args.model);
    let response: PredictResponse = call(&nats.client, subject, &args.request(), args.timeout)
        .await
        .with_context(|| format!("asking model {} for a prediction", args.model))?;
    if global.json {
        return emit_json(&response);
    }
    let mut lines = vec![
        ("score", format!("{:.6}", response.score)),
        ("model", response.model.clone()),
        ("version", response.version.to_string()),
        ("prediction id", response.prediction_id.clone()),
    ];
    if let Some(provenance) = &response.provenance {
        lines.push((
            "provenance",
            format!(
                "FEATURES user revision {}, item revision {}",
                provenance.user_revision, provenance.item_revision
            ),
        ));
    }
    emit(&key_values(&lines))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn features_must_be_finite_and_in_range() {
        assert_eq!(parse_feature("-0.5").unwrap(), -0.5);
        assert_eq!(parse_feature(" 2 ").unwrap(), 2.0);
        assert!(parse_feature("NaN").is_err());
        assert!(parse_feature("inf").is_err());
        assert!(parse_feature("1e300").is_err());
        assert!(parse_feature("x").is_err());
    }
}
