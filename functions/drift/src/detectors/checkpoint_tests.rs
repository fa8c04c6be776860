//! Checkpoints: a detector written to JSON mid-stream and read back (as the function does with a
//! KV bucket) must continue with exactly the detections, and end in exactly the state, of one that
//! was never interrupted, including when the cut falls right after a drift, while the detector
//! still owes its fresh start.

use std::fmt::Debug;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::*;

const GOLDEN: &str = include_str!("../../reference/river_detections.json");

/// A sequence from the goldens: real values with mean shifts at 1000 and 2000, or Bernoulli
/// errors whose rate rises at 1000.
fn sequence(name: &str) -> Vec<f64> {
    let golden: serde_json::Value = serde_json::from_str(GOLDEN).unwrap();
    serde_json::from_value(golden["sequences"][name]["values"].clone()).unwrap()
}

/// Runs `fresh` over `values` without a break, then again with a JSON round trip after each
/// index in `cuts`, and compares the two.
fn survives_checkpoints<D>(fresh: D, values: &[f64], cuts: &[usize]) -> usize
where
    D: Detector + Serialize + DeserializeOwned + PartialEq + Debug + Clone,
{
    let mut straight = fresh.clone();
    let expected: Vec<Detection> = values
        .iter()
        .map(|x| straight.update(*x).unwrap())
        .collect();

    let mut resumed = fresh;
    let mut got = Vec::with_capacity(values.len());
    for (i, x) in values.iter().enumerate() {
        got.push(resumed.update(*x).unwrap());
        if cuts.contains(&i) {
            let json = serde_json::to_string(&resumed).unwrap();
            let restored: D = serde_json::from_str(&json).unwrap();
            assert_eq!(restored, resumed, "{} state after {i}", resumed.name());
            resumed = restored;
        }
    }
    assert_eq!(got, expected, "{} detections", straight.name());
    assert_eq!(resumed, straight, "{} final state", straight.name());
    expected.iter().filter(|d| d.is_drift()).count()
}

/// Cuts spread over the stream plus one right after each drift the straight run reports.
fn cuts_for<D: Detector + Clone>(fresh: &D, values: &[f64]) -> Vec<usize> {
    let mut probe = fresh.clone();
    let mut cuts: Vec<usize> = (0..values.len()).step_by(337).collect();
    cuts.extend(
        values
            .iter()
            .enumerate()
            .filter(|(_, x)| probe.update(**x).unwrap().is_drift())
            .map(|(i, _)| i),
    );
    cuts
}

fn check<D>(fresh: D, values: &[f64]) -> usize
where
    D: Detector + Serialize + DeserializeOwned + PartialEq + Debug + Clone,
{
    let cuts = cuts_for(&fresh, values);
    survives_checkpoints(fresh, values, &cuts)
}

#[test]
fn every_detector_resumes_from_a_json_checkpoint() {
    let real = sequence("mean_shift");
    let errors = sequence("error_rate_rise");
    // Each run must include drifts, so the cuts exercise the pending fresh start.
    assert!(check(Adwin::default(), &real) > 0);
    assert!(check(PageHinkley::default(), &real) > 0);
    assert!(check(Ddm::default(), &errors) > 0);
    assert!(check(Kswin::default(), &real) > 0);
    let psi = StreamingPsi::new(StreamingPsiConfig {
        reference_size: 500,
        recent_size: 200,
        ..Default::default()
    })
    .unwrap();
    assert!(check(psi, &real) > 0);
    // As drift runs it: calibrated levels and a sliding reference.
    let calibrated = StreamingPsi::new(StreamingPsiConfig {
        reference_size: 500,
        recent_size: 200,
        sliding_reference: true,
        significance: Some(PsiSignificance {
            drift: 1e-6,
            warning: 1e-5,
        }),
        ..Default::default()
    })
    .unwrap();
    assert!(check(calibrated, &real) > 0);
}

#[test]
fn a_fresh_page_hinkley_checkpoint_is_plain_json() {
    // River starts the running minimum at +∞, which JSON cannot hold; it is written as null.
    let json = serde_json::to_value(PageHinkley::default()).unwrap();
    assert!(json["min_increase"].is_null());
    let restored: PageHinkley = serde_json::from_value(json).unwrap();
    assert_eq!(restored, PageHinkley::default());
}
