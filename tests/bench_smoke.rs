//! The benchmark suite, run once at a tiny size so it cannot rot: every scenario of every suite
//! completes without a failed request and writes its report. Figures from a debug build at this
//! size mean nothing and are not looked at.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

#[test]
fn the_benchmark_suite_runs_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("bench.json");
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_freshet-bench"))
        .args([
            "--runs",
            "1",
            "--requests",
            "50",
            "--seconds",
            "0.2",
            "--concurrency",
            "4",
            "--train-examples",
            "600",
            "--offered-rate",
            "300",
            "--featurize-actions",
            "300",
            "--detector-seeds",
            "1",
            // River (numpy, scipy) is installed by `make bench`, not by the tests.
            "--detectors-without-river",
            "--bank-stationary-actions",
            "20000",
            "--bank-change-actions",
            "20000",
            "--bank-change-seeds",
            "1",
            "--flood-rate-limit",
            "100",
            "--flood-offered",
            "1000",
            "--flood-concurrency",
            "4",
            "--flood-requests",
            "50",
            "--soak-swaps",
            "30",
            "--soak-interval",
            "10ms",
            "--pipeline-actions",
            "300",
            "--pipeline-rate",
            "300",
            "--pipeline-low-rate",
            "200",
            "--pipeline-seconds",
            "1",
            // The Python peer runs too (tools/river/install.sh installs River and nats-py), so
            // its programs cannot rot either.
            "--peer-actions",
            "1000",
            "--scale-replicas",
            "1,2",
            "--suite",
            "pipeline,predict,train,featurize,scale,detectors,soak",
            "--json",
        ])
        .arg(&report)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "freshet-bench exited with {}:\n{}",
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    // The scale curve ran (every point moved events), or said why no CPU quota could be set.
    let scale = &report["scale"];
    if scale.get("skipped").is_none() {
        let points = scale["points"].as_array().unwrap();
        assert_eq!(points.len(), 2, "{scale}");
        for runs in points {
            assert!(
                runs[0]["events_per_second"].as_f64().unwrap() > 0.0,
                "{scale}"
            );
        }
    }
    let rows = report["predict"]["rows"].as_array().unwrap();
    assert!(
        rows.len() >= 6,
        "every predictor scenario reported: {rows:?}"
    );
    // The flood beyond the rate was answered 429 (and served by the twin without a limit), and
    // the authorised caller never failed.
    let round = &report["predict"]["flood"]["rounds"][0];
    assert_eq!(round.as_array().unwrap().len(), 3, "{round}");
    assert!(
        round[1]["flood_refused_per_second"].as_f64().unwrap() > 0.0,
        "{round}"
    );
    assert!(
        round[2]["flood_refused_per_second"].as_f64().unwrap() == 0.0
            && round[2]["flood_served_per_second"].as_f64().unwrap() > 0.0,
        "{round}"
    );
    let featurize = &report["featurize"]["runs"][0];
    assert!(
        featurize["two_replicas_per_second"].as_f64().unwrap() > 0.0,
        "{featurize}"
    );
    let detectors = report["detectors"]["rows"].as_array().unwrap();
    assert_eq!(
        detectors.len(),
        30,
        "every detector on every family, River's defaults and drift's: {detectors:?}"
    );
    let bank = &report["detectors"]["bank"];
    assert!(
        bank["stationary"]["examples"].as_u64().unwrap() > 5_000
            && bank["changes"].as_array().unwrap().len() == 2,
        "the bank on bookstore examples, stationary and with each change: {bank}"
    );
    let windows = report["soak"]["windows"].as_array().unwrap();
    assert!(
        windows.len() >= 10 && report["soak"]["errors"] == 0,
        "{}",
        report["soak"]
    );
    let pipeline = &report["pipeline"]["runs"][0];
    assert!(
        pipeline["floors"]["two_hops_per_second"].as_f64().unwrap() > 0.0,
        "{pipeline}"
    );
    let stretches = |path: &serde_json::Value| path.as_array().unwrap().clone();
    let freshet = stretches(&pipeline["freshet"]);
    assert_eq!(
        freshet.len(),
        4,
        "full speed and three offered loads: {freshet:?}"
    );
    let peer = stretches(&pipeline["peer"]);
    assert_eq!(
        peer.len(),
        2,
        "the peer at full speed and at the low load: {peer:?}"
    );
    for stretch in freshet.iter().chain(&peer) {
        // Every event was learned and served: its freshness was measured.
        assert!(
            stretch["events_per_second"].as_f64().unwrap() > 0.0
                && stretch["freshness_p99_ms"].as_f64().unwrap() > 0.0,
            "{stretch}"
        );
    }
    for stretch in &freshet {
        // freshet's freshness splits into stages, each a part of some event's freshness (the
        // wall clock and the monotonic one may differ by a little).
        let most = stretch["freshness_max_ms"].as_f64().unwrap() + 5.0;
        for stage in ["featurize", "train", "serve"] {
            let stage = &stretch["stages"][stage];
            let (p50, p99) = (
                stage["p50_ms"].as_f64().unwrap(),
                stage["p99_ms"].as_f64().unwrap(),
            );
            assert!(0.0 <= p50 && p50 <= p99 && p99 <= most, "{stretch}");
        }
    }
    assert!(
        peer.iter().all(|stretch| stretch["stages"].is_null()),
        "the peer's pickles do not say when they were written: {peer:?}"
    );
    assert_eq!(
        pipeline["scale"].as_array().unwrap().len(),
        4,
        "every setup of the scale curve: {}",
        pipeline["scale"]
    );
    let sizes = report["predict"]["model_sizes"].as_array().unwrap();
    assert_eq!(sizes.len(), 4, "every model size: {sizes:?}");
    let run = &report["train"]["runs"][0];
    for key in [
        "floor_per_second",
        "train_per_second",
        "offered_freshness_p99_ms",
    ] {
        assert!(run[key].as_f64().unwrap() > 0.0, "{key} in {run}");
    }
}
