"""Checks every Kubernetes manifest freshet ships, offline, as `make test` runs it
(tests/infra_manifests.rs).

What is checked:
- the Helm chart (infra/helm/freshet) is linted and rendered by Helm's own engine (Helm 4's Go
  SDK, through helm-python-sdk: no helm binary can be downloaded here), with its default values
  and with infra/helm/freshet/ci/full-values.yaml;
- the kustomize overlays are rendered by `kubectl kustomize` when kubectl is installed, and the
  base, component and eventing files are read as they are in any case;
- every object of a built-in kind is validated against the Kubernetes API schemas
  (kubernetes-validate, strict: unknown fields are errors); the pod template of a Knative Service
  is validated as a core Pod (Knative's PodSpec is a subset of it);
- Knative, KEDA and Prometheus Operator objects, which those schemas do not cover, get their
  required fields and annotations checked here: an HPA-class Knative Service needs a
  scaled-object-override whose ScaledObject has a nats-jetstream trigger naming a stream, a
  consumer, a lag threshold and a TriggerAuthentication that exists; a PrometheusRule has the
  alerts operators need, and every freshet_* metric an alert or the dashboard reads is one the
  code registers.

Usage: check_manifests.py            (everything)
       check_manifests.py FILE...    (only these files, e.g. a broken fixture)
Exits 1 with one line per problem.
"""

import json
import pathlib
import re
import shutil
import subprocess
import sys

import kubernetes_validate
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
CHART = ROOT / "infra/helm/freshet"
K8S_VERSION = "1.30.0"

# Groups kubernetes-validate has schemas for.
BUILT_IN_GROUPS = {"", "apps", "batch", "policy", "networking.k8s.io", "autoscaling", "rbac.authorization.k8s.io"}

# The alerts an operator of freshet needs, by what they watch.
REQUIRED_ALERTS = {
    "consumer lag": "FreshetConsumerLag",
    "freshness": "FreshetStale",
    "max model age": "FreshetModelTooOld",
    "dead-letter rate": "FreshetDeadLetters",
    "quarantine": "FreshetQuarantine",
    "refused batches": "FreshetBatchesRefused",
    "pointer stuck": "FreshetPointerStuck",
}

problems = []


def problem(where, text):
    problems.append(f"{where}: {text}")


def registered_metrics():
    """Every metric family the code registers (`register("name", ...)`), as Prometheus names it."""
    names = set()
    pattern = re.compile(r'register\(\s*"([a-z_]+)"', re.S)
    for source in list((ROOT / "functions").rglob("*.rs")) + list((ROOT / "shared").rglob("*.rs")):
        names.update(pattern.findall(source.read_text()))
    # The common families of shared/core/src/metrics.rs, registered on the registry itself.
    text = (ROOT / "shared/core/src/metrics.rs").read_text()
    names.update(re.findall(r'registry\.register\(\s*"([a-z_]+)"', text, re.S))
    return {f"freshet_{n}" for n in names}


def metric_families_read(expr):
    """The freshet_* families a PromQL expression reads (series suffixes removed)."""
    found = set()
    for name in re.findall(r"\bfreshet_[a-z_]+", expr):
        for suffix in ("_bucket", "_count", "_sum", "_total", "_created"):
            if name.endswith(suffix):
                name = name[: -len(suffix)]
                break
        found.add(name)
    return found


def group_of(doc):
    api = doc.get("apiVersion", "")
    return api.split("/")[0] if "/" in api else ""


def validate_built_in(where, doc):
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as err:
        path = "/".join(str(p) for p in err.path)
        problem(where, f"{doc['kind']} {path}: {err.message}")
    except kubernetes_validate.SchemaNotFoundError as err:
        problem(where, f"no Kubernetes schema for {doc.get('apiVersion')} {doc.get('kind')}: {err}")


def check_knative_service(where, doc, trigger_auths):
    name = doc.get("metadata", {}).get("name")
    template = doc.get("spec", {}).get("template", {})
    annotations = template.get("metadata", {}).get("annotations", {}) or {}
    spec = template.get("spec", {})
    if not name:
        problem(where, "Knative Service without metadata.name")
    containers = spec.get("containers") or []
    if len(containers) != 1 or not containers[0].get("image"):
        problem(where, f"Knative Service {name}: exactly one container with an image")
    # Knative's PodSpec is a subset of the core one: its template must be a valid Pod.
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name or "pod"}, "spec": spec}
    pod_spec = dict(spec)
    for knative_only in ("containerConcurrency", "timeoutSeconds", "responseStartTimeoutSeconds", "idleTimeoutSeconds"):
        pod_spec.pop(knative_only, None)
    pod["spec"] = pod_spec
    validate_built_in(f"{where} (Knative Service {name}'s pod template)", pod)
    if "name" in template.get("metadata", {}):
        problem(where, f"Knative Service {name}: a pinned revision name; the autoscaler-keda extension follows revisions itself")
    kind = annotations.get("autoscaling.knative.dev/class", "kpa.autoscaling.knative.dev")
    if kind == "hpa.autoscaling.knative.dev":
        for needed in ("autoscaling.knative.dev/min-scale", "autoscaling.knative.dev/max-scale"):
            if needed not in annotations:
                problem(where, f"Knative Service {name}: HPA class without {needed}")
        raw = annotations.get("autoscaling.knative.dev/scaled-object-override")
        if raw is None:
            problem(where, f"Knative Service {name}: HPA class without autoscaling.knative.dev/scaled-object-override")
            return
        try:
            scaled = json.loads(raw)
        except json.JSONDecodeError as err:
            problem(where, f"Knative Service {name}: scaled-object-override is not JSON: {err}")
            return
        so = scaled.get("spec", {})
        if "scaleTargetRef" in so:
            problem(where, f"Knative Service {name}: the override must leave scaleTargetRef to the extension")
        if "minReplicaCount" not in so:
            problem(where, f"Knative Service {name}: the override sets no minReplicaCount (the extension does not take it from min-scale)")
        triggers = so.get("triggers") or []
        if not triggers:
            problem(where, f"Knative Service {name}: the override has no trigger")
        for trigger in triggers:
            metadata = trigger.get("metadata", {})
            if trigger.get("type") != "nats-jetstream":
                problem(where, f"Knative Service {name}: trigger {trigger.get('type')} is not nats-jetstream")
            for needed in ("stream", "consumer", "lagThreshold"):
                if not isinstance(metadata.get(needed), str) or not metadata.get(needed):
                    problem(where, f"Knative Service {name}: trigger without {needed} (a string)")
            auth = (trigger.get("authenticationRef") or {}).get("name")
            if auth is None:
                problem(where, f"Knative Service {name}: trigger without authenticationRef")
            elif trigger_auths is not None and auth not in trigger_auths:
                problem(where, f"Knative Service {name}: TriggerAuthentication {auth} is not among the manifests")
    elif kind == "kpa.autoscaling.knative.dev":
        if annotations.get("autoscaling.knative.dev/scaled-object-override"):
            problem(where, f"Knative Service {name}: a scaled-object-override on a KPA-class Service does nothing")
    else:
        problem(where, f"Knative Service {name}: unknown autoscaling class {kind}")


def check_trigger_authentication(where, doc, config_maps):
    name = doc.get("metadata", {}).get("name")
    refs = doc.get("spec", {}).get("configMapTargetRef") or []
    if not refs and not doc.get("spec", {}).get("secretTargetRef"):
        problem(where, f"TriggerAuthentication {name} names no parameter source")
    for ref in refs:
        for needed in ("parameter", "name", "key"):
            if not ref.get(needed):
                problem(where, f"TriggerAuthentication {name}: configMapTargetRef without {needed}")
        if config_maps is not None:
            data = config_maps.get(ref.get("name"))
            if data is None:
                problem(where, f"TriggerAuthentication {name}: ConfigMap {ref.get('name')} is not among the manifests")
            elif ref.get("key") not in data:
                problem(where, f"TriggerAuthentication {name}: ConfigMap {ref.get('name')} has no key {ref.get('key')}")


def check_scaled_object(where, doc):
    spec = doc.get("spec", {})
    if not (spec.get("scaleTargetRef") or {}).get("name"):
        problem(where, f"ScaledObject {doc['metadata'].get('name')}: no scaleTargetRef.name")
    if not spec.get("triggers"):
        problem(where, f"ScaledObject {doc['metadata'].get('name')}: no trigger")


def check_monitor(where, doc):
    spec = doc.get("spec", {})
    endpoints = spec.get("podMetricsEndpoints") if doc["kind"] == "PodMonitor" else spec.get("endpoints")
    if not spec.get("selector"):
        problem(where, f"{doc['kind']} {doc['metadata'].get('name')}: no selector")
    if not endpoints or not all(e.get("port") or e.get("targetPort") for e in endpoints):
        problem(where, f"{doc['kind']} {doc['metadata'].get('name')}: endpoints without a port")


def check_rules(where, doc, metrics):
    alerts = set()
    for group in doc.get("spec", {}).get("groups") or []:
        if not group.get("name"):
            problem(where, "PrometheusRule group without a name")
        for rule in group.get("rules") or []:
            label = rule.get("alert") or rule.get("record")
            if not label or not str(rule.get("expr", "")).strip():
                problem(where, f"PrometheusRule rule without alert/record or expr: {rule}")
                continue
            if rule.get("alert"):
                alerts.add(rule["alert"])
                if not (rule.get("labels") or {}).get("severity"):
                    problem(where, f"alert {label} has no severity")
                if not (rule.get("annotations") or {}).get("summary"):
                    problem(where, f"alert {label} has no summary")
            for family in metric_families_read(str(rule["expr"])) - metrics:
                problem(where, f"alert {label} reads {family}, which no function registers")
    for what, alert in REQUIRED_ALERTS.items():
        if alert not in alerts:
            problem(where, f"no alert on {what} ({alert})")


def check_dashboard(where, doc, metrics):
    for key, text in (doc.get("data") or {}).items():
        if not key.endswith(".json"):
            continue
        try:
            dashboard = json.loads(text)
        except json.JSONDecodeError as err:
            problem(where, f"dashboard {key} is not JSON: {err}")
            continue
        panels = dashboard.get("panels") or []
        if not panels:
            problem(where, f"dashboard {key} has no panel")
        for panel in panels:
            for target in panel.get("targets") or []:
                for family in metric_families_read(target.get("expr", "")) - metrics:
                    problem(where, f"dashboard panel {panel.get('title')!r} reads {family}, which no function registers")


def check_documents(where, docs, metrics, complete=True):
    """Checks one set of documents (a rendering); cross-references only when it is `complete`."""
    docs = [d for d in docs if d]
    config_maps = {d["metadata"]["name"]: d.get("data") or {} for d in docs if d.get("kind") == "ConfigMap"} if complete else None
    trigger_auths = {d["metadata"]["name"] for d in docs if d.get("kind") == "TriggerAuthentication"} if complete else None
    for doc in docs:
        kind, group = doc.get("kind"), group_of(doc)
        if group in BUILT_IN_GROUPS:
            validate_built_in(where, doc)
            if kind == "ConfigMap" and any(k.endswith(".json") for k in (doc.get("data") or {})):
                check_dashboard(where, doc, metrics)
        elif group == "serving.knative.dev" and kind == "Service":
            check_knative_service(where, doc, trigger_auths)
        elif group == "keda.sh" and kind == "TriggerAuthentication":
            check_trigger_authentication(where, doc, config_maps)
        elif group == "keda.sh" and kind == "ScaledObject":
            check_scaled_object(where, doc)
        elif group == "monitoring.coreos.com" and kind in ("PodMonitor", "ServiceMonitor"):
            check_monitor(where, doc)
        elif group == "monitoring.coreos.com" and kind == "PrometheusRule":
            check_rules(where, doc, metrics)
        elif group == "eventing.knative.dev" and kind in ("Broker", "Trigger"):
            if kind == "Trigger" and not (doc.get("spec", {}).get("broker") and doc.get("spec", {}).get("subscriber")):
                problem(where, f"Trigger {doc['metadata'].get('name')}: needs spec.broker and spec.subscriber")
        else:
            problem(where, f"{doc.get('apiVersion')} {kind}: no check for this kind")
    return len(docs)


def render_chart(values_file=None):
    import helm_python as helm

    lint = helm.lint(str(CHART))
    for message in lint.get("errors") or []:
        problem("helm lint", str(message))
    values = yaml.safe_load(values_file.read_text()) if values_file else {}
    with helm.Chart.load(str(CHART)) as chart:
        chart.validate_schema(values)
        rendered = chart.render(values, name="freshet", namespace="freshet")
    docs = []
    for text in rendered.values():
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def main(argv):
    metrics = registered_metrics()
    if argv:
        for path in argv:
            docs = list(yaml.safe_load_all(pathlib.Path(path).read_text()))
            check_documents(path, docs, metrics)
    else:
        counts = {}
        counts["helm (default values)"] = check_documents("helm (default values)", render_chart(), metrics)
        full = CHART / "ci/full-values.yaml"
        counts["helm (ci/full-values.yaml)"] = check_documents("helm (full values)", render_chart(full), metrics)
        k8s = ROOT / "infra/k8s"
        for path in sorted(k8s.rglob("*.yaml")):
            if path.name.startswith("kustomization") or path.name == "kustomizeconfig.yaml" or path.name.endswith("-patch.yaml") or "patch" in path.stem:
                continue
            counts[str(path.relative_to(ROOT))] = check_documents(
                str(path.relative_to(ROOT)), yaml.safe_load_all(path.read_text()), metrics, complete=False
            )
        kubectl = shutil.which("kubectl")
        for overlay in ("dev", "production"):
            where = f"infra/k8s/overlays/{overlay} (kubectl kustomize)"
            if kubectl is None:
                print(f"{where}: not rendered, kubectl is not installed (its files were checked one by one)")
                continue
            out = subprocess.run([kubectl, "kustomize", str(k8s / "overlays" / overlay)], capture_output=True, text=True)
            if out.returncode != 0:
                problem(where, out.stderr.strip())
                continue
            counts[where] = check_documents(where, yaml.safe_load_all(out.stdout), metrics)
        for where, count in counts.items():
            print(f"{where}: {count} objects")
    for line in problems:
        print(line, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
