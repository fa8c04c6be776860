//! `freshet features show` against a real server and featurize: an entity's state as featurize
//! wrote it, a pair's features as predict computes them, and clear refusals.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::Duration;

use freshet_tests::{Stack, bookstore_events, eventually};

/// `freshet features show bookstore ENTITY ID --pair OTHER`, then `rest`.
fn pair(entity: &str, id: &str, other: &str, rest: &[&str]) -> Vec<String> {
    ["features", "show", "bookstore", entity, id, "--pair", other]
        .iter()
        .chain(rest)
        .map(|arg| arg.to_string())
        .collect()
}

fn strs(owned: &[String]) -> Vec<&str> {
    owned.iter().map(String::as_str).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_prints_an_entitys_state_and_a_pairs_features() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    stack.spawn("featurize", &["--label-horizon", "0s"])?;
    for event in bookstore_events(6, 40, "show") {
        stack.publish_event(&event).await?;
    }
    let shown = eventually(
        Duration::from_secs(30),
        "u1's state in FEATURES",
        || async {
            let (code, out, _) =
                stack.run_cli(&["features", "show", "bookstore", "user", "u1", "--json"]);
            (code == Some(0)).then(|| serde_json::from_str::<serde_json::Value>(&out).unwrap())
        },
    )
    .await?;
    assert_eq!(shown["key"], "user.u1");
    assert!(shown["revision"].as_u64().unwrap() > 0, "{shown}");
    assert!(
        shown["state"].as_object().is_some_and(|s| !s.is_empty()),
        "{shown}"
    );
    assert!(shown.get("features").is_none(), "no pair, no features");

    // With a pair: one value per feature of the bookstore schema, named, finite. The same
    // pair asked from the item's side, at the same time, gives the same features.
    let names = freshet_features::bookstore::schema().features;
    let features = |owned: &[String]| {
        let (code, out, err) = stack.run_cli(&strs(owned));
        assert_eq!(code, Some(0), "{err}");
        let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
        names
            .iter()
            .map(|name| shown["features"][name].as_f64().unwrap())
            .collect::<Vec<f64>>()
    };
    let at = chrono::Utc::now().to_rfc3339();
    let from_user = features(&pair("user", "u1", "b1", &["--at", &at, "--json"]));
    assert_eq!(from_user.len(), names.len());
    assert!(from_user.iter().all(|v| v.is_finite()), "{from_user:?}");
    let from_item = features(&pair("item", "b1", "u1", &["--at", &at, "--json"]));
    assert_eq!(from_user, from_item);
    // A user with no state reads as new, as predict reads one.
    let new_user = features(&pair("item", "b1", "nobody", &["--at", &at, "--json"]));
    assert_ne!(new_user, from_user);

    // An item's category has state of its own; the table output names every feature.
    let (code, out, err) = stack.run_cli(&["features", "show", "bookstore", "category", "c1"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("category.c1"), "{out}");
    let (code, out, err) = stack.run_cli(&strs(&pair("user", "u1", "b1", &[])));
    assert_eq!(code, Some(0), "{err}");
    for name in &names {
        assert!(out.contains(name.as_str()), "{name} missing from:\n{out}");
    }

    // Nothing known: exit 3, naming the key. Another model: refused, saying why.
    let (code, _, err) = stack.run_cli(&["features", "show", "bookstore", "user", "nobody"]);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("user.nobody"), "{err}");
    let (code, _, err) = stack.run_cli(&["features", "show", "fraud", "user", "u1"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("bookstore model only"), "{err}");
    Ok(())
}
