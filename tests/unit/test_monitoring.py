"""k8s/monitoring: the Component composes with the overlays, the ServiceMonitor finds the metrics port,
the alert rules and the Grafana dashboard are well formed and only query metrics the server exports.

The same checks against a live scrape: tests/integration/test_metrics.py.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from serving.torchserve.server import METRICS_CONFIG
from tests.assets.kubectl import kustomize

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "k8s" / "monitoring"
DASHBOARD = MONITORING / "dashboard.json"
RULES = MONITORING / "prometheusrule.yaml"
OVERLAYS = ("cpu", "gpu")
# Series Prometheus makes itself, not the server.
PROMETHEUS_SERIES = {"up"}
GRAFANA_BUILTINS = {"__rate_interval", "__interval", "__range"}

Doc = dict[str, Any]


# --- PromQL: which metrics does an expression read? ---------------------------------------------

_CLAUSES = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless"}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (functions, label names, keywords, variables left out)."""
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)  # strings, e.g. label values with $variables
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors
    text = _CLAUSES.sub("", text)
    text = re.sub(r"\$\{?\w+\}?", "", text)
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", text):
        rest = text[match.end() :].lstrip()
        if rest.startswith("(") or match.group() in _KEYWORDS:
            continue  # a function or an operator
        names.add(match.group())
    return names


@pytest.mark.parametrize(
    "expr, names",
    [
        (
            'sum by (le) (rate(ckptserve_inference_seconds_bucket{ModelName=~"$model"}[5m]))',
            {"ckptserve_inference_seconds_bucket"},
        ),
        (
            "time() - max by (ns) (ckptserve_checkpoint_written_timestamp_seconds) > 6 * 3600",
            {"ckptserve_checkpoint_written_timestamp_seconds"},
        ),
        ("sum(rate(a_sum[$__rate_interval])) / sum(rate(b_count[1m])) / 1e6", {"a_sum", "b_count"}),
        ('absent(up{job="x"} == 1) or on (namespace) vector(0)', {"up"}),
        ("histogram_quantile(0.99, sum without (pod) (rate(h_bucket[5m]))) > bool 0.5", {"h_bucket"}),
    ],
)
def test_promql_metric_names(expr: str, names: set[str]) -> None:
    assert promql_metric_names(expr) == names


def dashboard() -> Doc:
    return json.loads(DASHBOARD.read_text())


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, metric names query) for every panel target and every query variable."""
    queries = [
        (f"panel {panel['title']!r} {target['refId']}", target["expr"])
        for panel in dashboard()["panels"]
        for target in panel.get("targets", [])
    ]
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            metric = re.fullmatch(r"label_values\(\s*([^,{]+)(\{[^}]*\})?\s*,\s*\w+\s*\)", query)
            assert metric, f"variable {variable['name']}: {query}"
            queries.append((f"variable {variable['name']}", metric.group(1).strip()))
    return queries


def rule_queries() -> list[tuple[str, str]]:
    spec = yaml.safe_load(RULES.read_text())["spec"]
    return [(f"alert {rule['alert']}", rule["expr"]) for group in spec["groups"] for rule in group["rules"]]


def names_in(queries: list[tuple[str, str]]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for where, expr in queries:
        names = promql_metric_names(expr)
        assert names, f"{where} reads no metric: {expr}"
        for name in names:
            found.setdefault(name, set()).add(where)
    return found


def configured_sample_names() -> set[str]:
    """Every sample name TorchServe exports with the shipped metrics config (histograms: 3 series)."""
    config = yaml.safe_load(METRICS_CONFIG.read_text())
    names = set()
    for section in ("ts_metrics", "model_metrics"):
        for kind, metrics in config[section].items():
            for metric in metrics:
                suffixes = ("_bucket", "_sum", "_count") if kind == "histogram" else ("",)
                names |= {metric["name"] + suffix for suffix in suffixes}
    return names


def test_dashboard_and_rules_query_only_metrics_the_server_is_configured_to_export() -> None:
    known = configured_sample_names() | PROMETHEUS_SERIES
    unknown = {n: w for n, w in names_in(dashboard_queries() + rule_queries()).items() if n not in known}
    assert not unknown, f"not exported by ckptserve's TorchServe: {unknown}"


# --- Grafana dashboard --------------------------------------------------------------------------


def test_dashboard_is_grafana_json() -> None:
    board = dashboard()
    assert board["uid"] == "ckptserve" and board["title"]
    assert isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 36
    variables = {v["name"]: v for v in board["templating"]["list"]}
    source = variables["datasource"]
    assert (source["type"], source["query"]) == ("datasource", "prometheus")
    panels = board["panels"]
    assert len({p["id"] for p in panels}) == len(panels), "panel ids must be unique"
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        where = f"panel {panel['title']!r}"
        assert panel["type"] in {"timeseries", "stat", "table"}, where
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
        assert panel["targets"], f"{where} has no query"
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"]), where
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}" and target["expr"].strip(), where
            used = set(re.findall(r"\$\{?(\w+)\}?", target["expr"]))
            assert used <= set(variables) | GRAFANA_BUILTINS, f"{where}: undefined variables {used}"
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, where
        mine = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not mine & cells, f"{where} overlaps another panel"
        cells |= mine


def test_dashboard_shows_what_an_operator_needs() -> None:
    read = set(names_in(dashboard_queries()))
    for needed in (
        "ts_inference_requests_total",  # request rate
        "ckptserve_request_errors_total",  # errors by reason
        "ckptserve_preprocess_seconds_bucket",  # p50/p99 per stage
        "ckptserve_inference_seconds_bucket",
        "ckptserve_postprocess_seconds_bucket",
        "ckptserve_batch_size_sum",
        "ckptserve_checkpoint_info",  # live epoch / sha
        "ckptserve_reloads_total",
        "ckptserve_worker_ready_seconds_total",  # worker readiness
        "ckptserve_checkpoint_written_timestamp_seconds",  # checkpoint age
        "up",
    ):
        assert needed in read, f"no panel reads {needed}"
    info_queries = [e for _, e in dashboard_queries() if "ckptserve_checkpoint_info" in e]
    # Replaced checkpoints stay exported at 0: every query must keep only the live one.
    assert info_queries and all("== 1" in e for e in info_queries)


# --- alert rules --------------------------------------------------------------------------------


def test_alert_rules_are_well_formed() -> None:
    rule = yaml.safe_load(RULES.read_text())
    assert (rule["apiVersion"], rule["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    alerts = [r for group in rule["spec"]["groups"] for r in group["rules"]]
    assert len({a["alert"] for a in alerts}) == len(alerts)
    for alert in alerts:
        assert re.fullmatch(r"CkptServe[A-Za-z0-9]+", alert["alert"])
        assert alert["labels"]["severity"] in {"critical", "warning", "info"}
        assert alert["annotations"]["summary"] and alert["annotations"]["description"]
        if "for" in alert:
            assert re.fullmatch(r"\d+[smh]", alert["for"]), alert["alert"]
        # The ServiceMonitor's job label is the Service's name: every rule selects it.
        assert 'job="ckptserve"' in alert["expr"], alert["alert"]
    names = {a["alert"] for a in alerts}
    assert {
        "CkptServeTargetDown",
        "CkptServeMetricsAbsent",
        "CkptServeNoReadyWorkers",
        "CkptServeInferenceP99High",
        "CkptServeReloadRejected",
        "CkptServeCheckpointStale",
    } <= names
    read = names_in(rule_queries())
    assert "ckptserve_worker_ready_seconds_total" in read and "ckptserve_reloads_total" in read


# --- the Component in the overlays --------------------------------------------------------------


@pytest.fixture(scope="module", params=OVERLAYS)
def monitored(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, list[Doc]]:
    """An overlay that adds the Component to k8s/overlays/NAME, as the README tells users to."""
    work = tmp_path_factory.mktemp(f"monitored-{request.param}")
    # kustomize takes relative paths only.
    overlay = os.path.relpath(ROOT / "k8s" / "overlays" / request.param, work)
    component = os.path.relpath(MONITORING, work)
    (work / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources:\n  - {overlay}\ncomponents:\n  - {component}\n"
    )
    return request.param, kustomize(work)


def _one(docs: list[Doc], kind: str) -> Doc:
    found = [d for d in docs if d.get("kind") == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def test_overlays_leave_monitoring_opt_in() -> None:
    # Applying a ServiceMonitor fails on clusters without the Prometheus Operator's CRDs.
    for name in OVERLAYS:
        kinds = {d["kind"] for d in kustomize(ROOT / "k8s" / "overlays" / name)}
        assert not kinds & {"ServiceMonitor", "PrometheusRule"}, name


def test_service_monitor_scrapes_the_metrics_port(monitored: tuple[str, list[Doc]]) -> None:
    name, docs = monitored
    monitor, service = _one(docs, "ServiceMonitor"), _one(docs, "Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert all(service["metadata"]["labels"].get(k) == v for k, v in selector.items()), name
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in ports and ports[endpoint["port"]]["port"] == 8082, name
    assert endpoint["path"] == "/metrics"
    assert "namespace" not in monitor["metadata"], "picked at apply time, like the base"
    # The alert rules select job="ckptserve": the operator names the job after the Service.
    assert service["metadata"]["name"] == "ckptserve" and "jobLabel" not in monitor["spec"]


def test_rules_and_dashboard_are_rendered(monitored: tuple[str, list[Doc]]) -> None:
    name, docs = monitored
    assert _one(docs, "PrometheusRule")["spec"] == yaml.safe_load(RULES.read_text())["spec"]
    config_map = _one(docs, "ConfigMap")
    assert config_map["metadata"]["name"] == "ckptserve-dashboard", "a fixed name, no hash suffix"
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config_map["data"]["ckptserve.json"]) == dashboard()
    # The server side is untouched by the Component.
    assert _one(docs, "Deployment")["metadata"]["name"] == "ckptserve", name
