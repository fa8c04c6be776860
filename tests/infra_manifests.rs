//! Every Kubernetes manifest freshet ships, checked offline by tools/check_manifests.py: the Helm
//! chart rendered by Helm's own engine (Helm 4's Go SDK through helm-python-sdk, with its
//! default values and with every option on), the kustomize overlays (rendered by
//! `kubectl kustomize` where kubectl is installed, file by file in any case), built-in kinds
//! against the Kubernetes API schemas (kubernetes-validate), and the required fields and
//! annotations of the Knative, KEDA and Prometheus Operator objects. The checker is also shown
//! manifests it must refuse, so a checker that passes everything fails here.

use std::path::{Path, PathBuf};
use std::process::Output;

fn checker() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/check_manifests.py")
}

/// Runs the checker on `files` (every manifest when empty).
fn check(files: &[&Path]) -> anyhow::Result<Output> {
    Ok(std::process::Command::new(freshet_tests::tools_python()?)
        .arg(checker())
        .args(files)
        .output()?)
}

/// The checker's complaints about `manifest` (written to a file first).
fn complaints(manifest: &str) -> anyhow::Result<String> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("manifest.yaml");
    std::fs::write(&path, manifest)?;
    let output = check(&[&path])?;
    assert!(
        !output.status.success(),
        "the checker passed a manifest it must refuse:\n{manifest}"
    );
    Ok(String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn every_manifest_renders_and_validates() -> anyhow::Result<()> {
    let output = check(&[])?;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(output.status.success(), "{stdout}\n{stderr}");
    // The chart was rendered with both sets of values, and the base read.
    for rendered in [
        "helm (default values):",
        "helm (ci/full-values.yaml):",
        "infra/k8s/base/featurize.yaml:",
        "infra/k8s/base/keda.yaml:",
    ] {
        assert!(
            stdout.contains(rendered),
            "{rendered} missing from\n{stdout}"
        );
    }
    Ok(())
}

#[test]
fn a_knative_consumer_pinned_to_its_own_scaled_object_is_refused() -> anyhow::Result<()> {
    // The layout before the Knative autoscaler-keda extension created the ScaledObjects: a
    // pinned revision, no override, and a ScaledObject that must be edited at every rollout.
    let said = complaints(
        r#"
apiVersion: serving.knative.dev/v1
kind: Service
metadata: {name: featurize}
spec:
  template:
    metadata:
      name: featurize-v1
      annotations:
        autoscaling.knative.dev/class: hpa.autoscaling.knative.dev
        autoscaling.knative.dev/scaled-object-auto-create: "false"
    spec:
      containers: [{name: featurize, image: freshet}]
"#,
    )?;
    assert!(said.contains("a pinned revision name"), "{said}");
    assert!(
        said.contains("without autoscaling.knative.dev/scaled-object-override"),
        "{said}"
    );
    assert!(
        said.contains("without autoscaling.knative.dev/max-scale"),
        "{said}"
    );
    Ok(())
}

#[test]
fn an_override_without_what_keda_needs_is_refused() -> anyhow::Result<()> {
    let said = complaints(
        r#"
apiVersion: serving.knative.dev/v1
kind: Service
metadata: {name: train}
spec:
  template:
    metadata:
      annotations:
        autoscaling.knative.dev/class: hpa.autoscaling.knative.dev
        autoscaling.knative.dev/min-scale: "1"
        autoscaling.knative.dev/max-scale: "2"
        autoscaling.knative.dev/scaled-object-override: '{"spec": {"triggers": [{"type": "nats-jetstream", "metadata": {"stream": "EXAMPLES", "lagThreshold": 2000}, "authenticationRef": {"name": "nowhere"}}]}}'
    spec:
      containers: [{name: train, image: freshet, resources: {limit: {cpu: "1"}}}]
"#,
    )?;
    assert!(said.contains("trigger without consumer"), "{said}");
    assert!(
        said.contains("trigger without lagThreshold (a string)"),
        "{said}"
    );
    assert!(said.contains("sets no minReplicaCount"), "{said}");
    assert!(said.contains("TriggerAuthentication nowhere"), "{said}");
    // The pod template is held to the core Pod schema: `limit` is not a field.
    assert!(said.contains("pod template"), "{said}");
    Ok(())
}

#[test]
fn built_in_kinds_are_held_to_the_kubernetes_schemas() -> anyhow::Result<()> {
    let said = complaints(
        r#"
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: predict}
spec:
  maxUnavailable: 1
  selector: {matchLabels: {app.kubernetes.io/component: predict}}
  unhealthyPodEvictionPolicy: Sometimes
  surprise: true
"#,
    )?;
    assert!(said.contains("PodDisruptionBudget"), "{said}");
    Ok(())
}

#[test]
fn alerts_must_cover_what_operators_watch_and_read_real_metrics() -> anyhow::Result<()> {
    let said = complaints(
        r#"
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata: {name: freshet}
spec:
  groups:
    - name: freshet
      rules:
        - alert: FreshetConsumerLag
          expr: max(freshet_consumer_lag_messages) > 10
          labels: {severity: warning}
          annotations: {summary: behind}
"#,
    )?;
    assert!(
        said.contains("reads freshet_consumer_lag_messages, which no function registers"),
        "{said}"
    );
    for missing in [
        "freshness",
        "max model age",
        "dead-letter rate",
        "quarantine",
        "refused batches",
        "pointer stuck",
    ] {
        assert!(said.contains(&format!("no alert on {missing}")), "{said}");
    }
    Ok(())
}
