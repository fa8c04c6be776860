//! Property tests (proptest) of the code that meets untrusted input first: the event decoder
//! and the example decoder on arbitrary bytes and on hostile JSON. They run in `make test` with a
//! bounded number of cases. (The feature builder's property is in the feature crate.)
//!
//! The properties: decoding never panics and either refuses with a reason or yields an event
//! whose every number is finite and within range.

use proptest::prelude::*;

use crate::events::{self, DEFAULT_MAX_EVENT_BYTES, EventData};
use crate::examples::ExampleRecord;

/// JSON values of any shape, numbers included at their extremes.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(|n| serde_json::json!(n)),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |x| x.is_finite())
            .prop_map(|x| serde_json::json!(x)),
        prop_oneof![Just(1e308), Just(-1e308), Just(1e12 + 1.0), Just(5e-324)]
            .prop_map(|x| serde_json::json!(x)),
        ".{0,40}".prop_map(serde_json::Value::String),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(serde_json::Value::Array),
            prop::collection::btree_map(".{0,12}", inner, 0..8)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Field names the decoder looks for, so generated events often get past the envelope.
fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("user".to_string()),
        Just("item".to_string()),
        Just("action".to_string()),
        Just("price".to_string()),
        Just("category".to_string()),
        Just("label".to_string()),
        Just("prediction_id".to_string()),
        Just("features".to_string()),
        Just("model".to_string()),
        "[a-z]{1,8}",
    ]
}

/// Events shaped like CloudEvents, with known and unknown types and arbitrary data.
fn event_like() -> impl Strategy<Value = serde_json::Value> {
    (
        prop::option::of(".{0,20}"),
        prop_oneof![
            Just("user_action"),
            Just("new_item"),
            Just("outcome"),
            Just("example"),
            Just("refund"),
        ],
        prop::collection::btree_map(field_name(), json_value(), 0..6),
        prop::option::of(".{0,30}"),
    )
        .prop_map(|(id, ty, data, time)| {
            let mut event = serde_json::json!({"specversion": "1.0", "source": "p", "type": ty,
                "data": serde_json::Value::Object(data.into_iter().collect())});
            if let Some(id) = id {
                event["id"] = serde_json::json!(id);
            }
            if let Some(time) = time {
                event["time"] = serde_json::json!(time);
            }
            event
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = events::decode(&bytes, DEFAULT_MAX_EVENT_BYTES);
        let _ = ExampleRecord::decode(&bytes);
    }

    #[test]
    fn a_decoded_event_is_finite_and_a_refusal_names_its_reason(event in event_like()) {
        let bytes = serde_json::to_vec(&event).unwrap_or_default();
        match events::decode(&bytes, DEFAULT_MAX_EVENT_BYTES) {
            Ok(decoded) => match decoded.data {
                EventData::NewItem(item) => prop_assert!(item.price.is_finite() && item.price.abs() <= 1e12),
                EventData::Example(example) => {
                    prop_assert!(example.features.iter().all(|x| x.is_finite()));
                    prop_assert!(example.label == 0.0 || example.label == 1.0);
                }
                EventData::Outcome(outcome) => prop_assert!(outcome.label.is_finite()),
                EventData::UserAction(_) => {}
            },
            Err(rejection) => prop_assert!(!rejection.detail.is_empty()),
        }
    }

    #[test]
    fn examples_decode_to_finite_rows_or_are_refused(
        features in prop::collection::vec(json_value(), 0..6),
        label in json_value(),
    ) {
        let body = serde_json::json!({"id": "ex-1", "model": "m", "schema": null, "features": features,
            "label": label, "source_event": "e", "event_time": null});
        if let Ok(example) = ExampleRecord::decode(&serde_json::to_vec(&body).unwrap_or_default()) {
            prop_assert!(example.features.iter().all(|x| x.is_finite()));
            prop_assert!(example.label == 0.0 || example.label == 1.0);
        }
    }
}
