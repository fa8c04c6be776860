//! `freshet predict`: asks a model's predictors for one score over NATS request/reply, with either
//! a ready feature vector or a (user, item) pair whose features the predictor looks up; and
//! `freshet recommend`: asks them for a user's top items, scored on request-time features.

use std::time::Duration;

use anyhow::Context;
use clap::Args;
use freshet::ids::{EntityId, ModelName};
use freshet::serving::{
    MAX_RECOMMENDATIONS, PredictRequest, PredictResponse, RecommendRequest, RecommendResponse,
    call, endpoint_recommend, endpoint_single,
};

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

/// Arguments of `freshet recommend`.
#[derive(Debug, Clone, Args)]
pub struct RecommendArgs {
    /// Model name
    pub model: ModelName,
    /// User to recommend items to (the predictor reads their features from FEATURES)
    #[arg(value_name = "USER")]
    pub for_user: EntityId,
    /// How many items, best first
    #[arg(long = "top", default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..=MAX_RECOMMENDATIONS as i64))]
    pub top: u16,
    /// How long to wait for an answer
    #[arg(long = "timeout", default_value = "2s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// Runs `freshet recommend`.
pub async fn recommend(global: &GlobalArgs, args: &RecommendArgs) -> anyhow::Result<()> {
    let nats = connect(global).await?;
    let subject = endpoint_recommend(&nats.subjects, &args.model);
    let request = RecommendRequest {
        user: args.for_user.clone(),
        top: Some(usize::from(args.top)),
    };
    let response: RecommendResponse = call(&nats.client, subject, &request, args.timeout)
        .await
        .with_context(|| {
            format!(
                "asking model {} for recommendations to {}",
                args.model, args.for_user
            )
        })?;
    if global.json {
        return emit_json(&response);
    }
    emit(&recommendations_table(&response))
}

/// The readable form of a recommendation: who for, by which version, then one ranked line per
/// item with the FEATURES revision it was scored on.
fn recommendations_table(response: &RecommendResponse) -> String {
    let mut text = format!(
        "top {} for {} by {} v{} (FEATURES user revision {})\n",
        response.items.len(),
        response.user,
        response.model,
        response.version,
        response.user_revision
    );
    let width = response
        .items
        .iter()
        .map(|r| r.item.chars().count())
        .max()
        .unwrap_or(0)
        .max("ITEM".len());
    text.push_str(&format!(
        "RANK  {:<width$}  SCORE     ITEM REVISION\n",
        "ITEM"
    ));
    for (rank, item) in response.items.iter().enumerate() {
        text.push_str(&format!(
            "{:>4}  {:<width$}  {:.6}  {}\n",
            rank + 1,
            item.item,
            item.score,
            item.item_revision
        ));
    }
    text
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn recommendations_are_ranked_in_aligned_columns() {
        let response = RecommendResponse {
            model: "bookstore".into(),
            version: 7,
            user: "u7".into(),
            user_revision: 12,
            items: vec![
                freshet::serving::Recommendation {
                    item: "b-viral".into(),
                    score: 0.91,
                    item_revision: 40,
                },
                freshet::serving::Recommendation {
                    item: "b2".into(),
                    score: 0.5,
                    item_revision: 3,
                },
            ],
        };
        assert_eq!(
            recommendations_table(&response),
            "top 2 for u7 by bookstore v7 (FEATURES user revision 12)\n\
             RANK  ITEM     SCORE     ITEM REVISION\n   \
             1  b-viral  0.910000  40\n   \
             2  b2       0.500000  3\n"
        );
    }

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
