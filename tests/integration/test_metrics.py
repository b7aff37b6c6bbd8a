"""Metrics on a real TorchServe started as `ckptserve serve` starts it: known traffic and reloads move the
scraped /metrics by exactly what was sent; every declared metric, dashboard query and alert reads a real
series; JSON log lines name the model, checkpoint and request ids."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import yaml
from prometheus_client.parser import text_string_to_metric_families

from serving import save_checkpoint
from serving.app.cli import build_parser
from serving.metrics import ALL, READY_TICK_S
from serving.torchserve import TorchServeProcess, free_port
from serving.torchserve.server import METRICS_CONFIG, settings_from_args
from tests.integration.conftest import DigitsCNN, Trained, http, package
from tests.polling import wait_until
from tests.unit.test_monitoring import dashboard_queries, names_in, rule_queries

pytestmark = pytest.mark.integration

MODEL = "metered"
WORKERS = 2
POLL_S = 0.2
DEADLINE_S = 30.0  # the frontend reads metric lines asynchronously; reloads need two polls + a load
GOOD = [1, 2, 3, 1, 4]  # instances per good request, each sent alone: one request per batch
IMAGE = [[[0.0] * 8 for _ in range(8)]]
BAD = [  # (body, content type, expected status, reason)
    (b'{"instances": [', "application/json", 400, "RequestError"),
    (json.dumps({"instances": [[1.0, 2.0, 3.0]]}).encode(), "application/json", 400, "RequestError"),
    (b'{"instances": [[[[NaN]]]]}', "application/json", 400, "RequestError"),
    (json.dumps({"instances": [IMAGE] * 65}).encode(), "application/json", 413, "PayloadTooLargeError"),
    (b"\x89PNG\r\n\x1a\n\x00\x00", "image/png", 415, "UnsupportedMediaTypeError"),
]
# Samples that move without traffic: the ready clock, and what TorchServe counts for /ping and scrapes.
CLOCKS = ("ckptserve_worker_ready_seconds_total", "Requests2XX", "QueueTime", "WorkerThreadTime")

Key = tuple[str, frozenset[tuple[str, str]]]


class Scrape(dict[Key, float]):
    """One /metrics scrape, parsed by prometheus_client's own parser: (sample name, labels) -> value.

    The parser names counter samples ``<family>_total`` even where the server wrote ``Requests2XX``;
    ``wire`` keeps the names as written, which is what Prometheus stores and queries read.
    """

    families: dict[str, object]
    wire: set[str]

    @classmethod
    def of(cls, url: str) -> Scrape:
        with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
            text = response.read().decode()
        scrape = cls()
        scrape.wire = set(re.findall(r"^([A-Za-z_:][A-Za-z0-9_:]*)[{ ]", text, re.M))
        scrape.families = {}
        for family in text_string_to_metric_families(text):
            scrape.families[family.name] = family
            for sample in family.samples:
                scrape[(sample.name, frozenset(sample.labels.items()))] = sample.value
        return scrape

    def value(self, name: str, **labels: str) -> float:
        """Sum of the samples called ``name`` whose labels include ``labels`` (0 when there is none)."""
        wanted = set(labels.items())
        return sum(v for (n, lbl), v in self.items() if n == name and wanted <= lbl)

    def series(self, name: str, **labels: str) -> dict[frozenset[tuple[str, str]], float]:
        wanted = set(labels.items())
        return {lbl: v for (n, lbl), v in self.items() if n == name and wanted <= lbl}

    def steady(self) -> dict[Key, float]:
        return {k: v for k, v in self.items() if not k[0].startswith(CLOCKS)}


def settle(url: str, ready: Callable[[Scrape], bool]) -> Scrape:
    """Poll until ``ready`` holds and nothing but the clocks moved between two scrapes 0.3 s apart."""
    deadline = time.monotonic() + DEADLINE_S
    previous = Scrape.of(url)
    while time.monotonic() < deadline:
        time.sleep(0.3)
        current = Scrape.of(url)
        if ready(current) and current.steady() == previous.steady():
            return current
        previous = current
    return previous  # the exact assertions that follow show what is missing


@dataclass
class Exercise:
    """What the module did to the server, and the scrapes around each step."""

    server: TorchServeProcess
    url: str
    watch: Path
    start: Scrape
    after_traffic: Scrape
    after_reload: Scrape
    after_rejection: Scrape
    traffic_seconds: float
    shas: dict[int, str] = field(default_factory=dict)
    saved_at: tuple[float, float] = (0.0, 0.0)
    request_ids: dict[int, str] = field(default_factory=dict)  # index in BAD -> id the client got


def sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def _nan_model() -> DigitsCNN:
    model = DigitsCNN()
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    return model


@pytest.fixture(scope="module")
def exercise(trained: Trained, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exercise]:
    watch = tmp_path_factory.mktemp("metered-watch")
    first = save_checkpoint(watch, trained.models[1], epoch=1)
    store = tmp_path_factory.mktemp("metered-store")
    package(
        store,
        MODEL,
        handler={"watch_dir": str(watch), "poll_interval_s": POLL_S, "json_logs": True},
        top={"minWorkers": WORKERS, "maxWorkers": WORKERS, "batchSize": 8, "maxBatchDelay": 10},
    )
    # The settings `ckptserve serve` builds from its flags: Prometheus mode and the shipped metrics config.
    flags = ("--http-port", "--management-port", "--metrics-port", "--grpc-port", "--grpc-management-port")
    argv = ["serve", "--model-store", str(store), "--models", f"{MODEL}={MODEL}.mar"]
    argv += ["--runtime-dir", str(tmp_path_factory.mktemp("metered-rt"))]
    for flag in flags:
        argv += [flag, str(free_port())]
    args = build_parser().parse_args(argv)
    settings = settings_from_args(args)
    assert settings.metrics_config == METRICS_CONFIG
    server = TorchServeProcess(settings).start()
    try:
        server.wait_ready([MODEL], timeout_s=180)
        url = server.urls.metrics
        start = settle(url, lambda s: s.value("ckptserve_worker_starts_total") == WORKERS)

        # Traffic: good and bad requests one at a time, so each is a batch of its own.
        infer = f"{server.urls.inference}/predictions/{MODEL}"
        request_ids: dict[int, str] = {}
        began = time.monotonic()
        for i in range(max(len(GOOD), len(BAD))):
            if i < len(GOOD):
                status, headers, body = http(infer, json.dumps({"instances": [IMAGE] * GOOD[i]}).encode())
                assert status == 200, body
                # Instances in the forward pass, as the batch-size metric counts them; one request.
                assert headers["x-ckptserve-batch-size"] == str(GOOD[i])
                assert headers["x-ckptserve-batch-requests"] == "1"
            if i < len(BAD):
                payload, content_type, expected, _ = BAD[i]
                status, headers, body = http(infer, payload, content_type)
                assert status == expected, body
                request_ids[i] = headers.get("x-request-id", "")
        traffic_seconds = time.monotonic() - began
        expected_batches = start.value("ckptserve_preprocess_seconds_count") + len(GOOD) + len(BAD)
        after_traffic = settle(
            url, lambda s: s.value("ckptserve_preprocess_seconds_count") >= expected_batches
        )

        # A good checkpoint: every worker reloads it.
        before_save = time.time()
        second = save_checkpoint(watch, trained.models[2], epoch=2)
        saved_at = (before_save, time.time())
        reloaded = start.value("ckptserve_reloads_total", result="success") + WORKERS
        after_reload = settle(url, lambda s: s.value("ckptserve_reloads_total", result="success") >= reloaded)

        # A checkpoint with NaN weights: every worker rejects it, and keeps serving epoch 2.
        third = save_checkpoint(watch, _nan_model(), epoch=3)
        rejected = start.value("ckptserve_reloads_total", result="rejected") + WORKERS
        after_rejection = settle(
            url, lambda s: s.value("ckptserve_reloads_total", result="rejected") >= rejected
        )
        yield Exercise(
            server=server,
            url=url,
            watch=watch,
            start=start,
            after_traffic=after_traffic,
            after_reload=after_reload,
            after_rejection=after_rejection,
            traffic_seconds=traffic_seconds,
            shas={1: sha(first), 2: sha(second), 3: sha(third)},
            saved_at=saved_at,
            request_ids=request_ids,
        )
    finally:
        server.stop()


def delta(after: Scrape, before: Scrape, name: str, **labels: str) -> float:
    return after.value(name, ModelName=MODEL, **labels) - before.value(name, ModelName=MODEL, **labels)


# --- start-up -----------------------------------------------------------------------------------


def test_start_up_reports_workers_load_time_and_the_live_checkpoint(exercise: Exercise) -> None:
    start = exercise.start
    assert start.value("ckptserve_worker_starts_total", ModelName=MODEL) == WORKERS
    load = start.value("ckptserve_model_load_seconds", ModelName=MODEL)
    assert 0 < load < 60
    live = {
        dict(k)["epoch"]: v for k, v in start.series("ckptserve_checkpoint_info", ModelName=MODEL).items()
    }
    assert live == {"1": 1.0}
    (labels,) = start.series("ckptserve_checkpoint_info", ModelName=MODEL)
    assert dict(labels)["sha256"] == exercise.shas[1]
    assert start.value("ckptserve_checkpoint_epoch", ModelName=MODEL) == 1
    # Created at 0, so that increase() in the alert sees the first rejection.
    reloads = {
        dict(k)["result"]: v for k, v in start.series("ckptserve_reloads_total", ModelName=MODEL).items()
    }
    assert reloads == {"success": 0.0, "rejected": 0.0}
    # TorchServe's own start-up gauge, one per worker.
    assert len(start.series("WorkerLoadTime")) == WORKERS


# --- traffic ------------------------------------------------------------------------------------


def test_request_counts_and_histograms_move_by_exactly_what_was_sent(exercise: Exercise) -> None:
    before, after = exercise.start, exercise.after_traffic
    good, bad = len(GOOD), len(BAD)
    # Every batch is preprocessed; only batches with a valid request run a forward and postprocess.
    assert delta(after, before, "ckptserve_preprocess_seconds_count") == good + bad
    for stage in ("inference", "postprocess"):
        assert delta(after, before, f"ckptserve_{stage}_seconds_count") == good
    assert delta(after, before, "ckptserve_batch_size_count") == good
    assert delta(after, before, "ckptserve_batch_size_sum") == sum(GOOD)
    # Buckets are cumulative: sizes 1, 1, 2, 3, 4.
    for le, count in (("1.0", 2), ("2.5", 3), ("5.0", 5), ("+Inf", 5)):
        assert delta(after, before, "ckptserve_batch_size_bucket", le=le) == count, le
    for stage in ("preprocess", "inference", "postprocess"):
        moved = delta(after, before, f"ckptserve_{stage}_seconds_sum")
        assert 0 < moved < exercise.traffic_seconds, stage  # seconds, and no more than the wall time
        assert delta(after, before, f"ckptserve_{stage}_seconds_bucket", le="+Inf") == delta(
            after, before, f"ckptserve_{stage}_seconds_count"
        )
    # TorchServe's frontend counts the same requests.
    assert after.value("ts_inference_requests_total", model_name=MODEL) - before.value(
        "ts_inference_requests_total", model_name=MODEL
    ) == (good + bad)
    assert after.value("Requests4XX_total") - before.value("Requests4XX_total") == bad
    assert after.value("Requests2XX_total") - before.value("Requests2XX_total") >= good


def test_errors_are_counted_by_reason(exercise: Exercise) -> None:
    before, after = exercise.start, exercise.after_traffic
    expected: dict[str, int] = {}
    for *_, reason in BAD:
        expected[reason] = expected.get(reason, 0) + 1
    moved = {
        dict(labels)["reason"]: value - before.value("ckptserve_request_errors_total", **dict(labels))
        for labels, value in after.series("ckptserve_request_errors_total", ModelName=MODEL).items()
    }
    assert {r: v for r, v in moved.items() if v} == expected


def test_traffic_moves_no_reload_or_checkpoint_metric(exercise: Exercise) -> None:
    before, after = exercise.start, exercise.after_traffic
    for name in ("ckptserve_reloads_total", "ckptserve_reload_seconds_count", "ckptserve_checkpoint_info"):
        assert after.series(name, ModelName=MODEL) == before.series(name, ModelName=MODEL), name


# --- reloads ------------------------------------------------------------------------------------


def test_a_reload_moves_the_success_counter_duration_and_live_checkpoint(exercise: Exercise) -> None:
    before, after = exercise.after_traffic, exercise.after_reload
    assert delta(after, before, "ckptserve_reloads_total", result="success") == WORKERS
    assert delta(after, before, "ckptserve_reloads_total", result="rejected") == 0
    assert delta(after, before, "ckptserve_reload_seconds_count") == WORKERS
    assert 0 < delta(after, before, "ckptserve_reload_seconds_sum") < DEADLINE_S * WORKERS
    info = {
        (dict(k)["epoch"], dict(k)["sha256"]): v
        for k, v in after.series("ckptserve_checkpoint_info", ModelName=MODEL).items()
    }
    # The replaced checkpoint stays exported (TorchServe cannot drop a label set) but at 0.
    assert info == {("1", exercise.shas[1]): 0.0, ("2", exercise.shas[2]): 1.0}
    assert after.value("ckptserve_checkpoint_epoch", ModelName=MODEL) == 2
    written = after.value("ckptserve_checkpoint_written_timestamp_seconds", ModelName=MODEL)
    assert exercise.saved_at[0] <= written <= exercise.saved_at[1]
    # Reloads are not requests.
    assert delta(after, before, "ckptserve_preprocess_seconds_count") == 0


def test_a_rejected_checkpoint_is_counted_and_never_becomes_live(exercise: Exercise) -> None:
    before, after = exercise.after_reload, exercise.after_rejection
    assert delta(after, before, "ckptserve_reloads_total", result="rejected") == WORKERS
    assert delta(after, before, "ckptserve_reloads_total", result="success") == 0
    assert delta(after, before, "ckptserve_reload_seconds_count") == 0  # durations of served ones only
    live = [dict(k) for k, v in after.series("ckptserve_checkpoint_info", ModelName=MODEL).items() if v == 1]
    assert live == [{**live[0], "epoch": "2", "sha256": exercise.shas[2]}]
    assert all(dict(k)["epoch"] != "3" for k in after.series("ckptserve_checkpoint_info"))
    assert after.value("ckptserve_checkpoint_epoch", ModelName=MODEL) == 2


# --- everything declared is exported, everything queried exists ----------------------------------


def test_every_declared_metric_is_exported(exercise: Exercise) -> None:
    scrape = exercise.after_rejection
    families = scrape.families
    samples = {name for name, _ in scrape}
    for metric in ALL:  # the handler's: real series, with our model's name
        names = (
            {metric.name + s for s in ("_bucket", "_sum", "_count")}
            if metric.kind == "histogram"
            else {metric.name}
        )
        assert names <= samples, f"{metric.name} has no series"
        assert scrape.series(next(iter(names)), ModelName=MODEL), metric.name
    config = yaml.safe_load(METRICS_CONFIG.read_text())
    for kind, metrics in config["ts_metrics"].items():  # TorchServe's: the family is registered
        for metric in metrics:
            family = metric["name"].removesuffix("_total") if kind == "counter" else metric["name"]
            assert family in families, metric["name"]
    # No other ckptserve_* series than those defined in serving/metrics.py.
    defined = {m.name for m in ALL}
    stray = {
        n
        for n in samples
        if n.startswith("ckptserve_")
        and n.removesuffix("_bucket").removesuffix("_sum").removesuffix("_count") not in defined
    }
    assert not stray


def test_every_dashboard_and_alert_query_reads_a_real_series(exercise: Exercise) -> None:
    scrape = exercise.after_rejection
    samples = scrape.wire | {"up"}  # up: made by Prometheus itself
    # A healthy server answers no 5xx, and a labelled counter has no series before its first increment:
    # for this one the registered family (its TYPE line) is what the server can show.
    registered_only = {"Requests5XX"}
    assert registered_only <= set(scrape.families)
    missing = {
        n: w
        for n, w in names_in(dashboard_queries() + rule_queries()).items()
        if n not in samples | registered_only
    }
    assert not missing, f"queried but not exported by the server: {missing}"


def test_the_ready_clock_counts_ready_workers(exercise: Exercise) -> None:
    # Each ready worker adds its measured ready time every READY_TICK_S: over a window the counter grows
    # by about window x workers, give or take a tick per worker at each end. The frontend may lag behind
    # the workers on a loaded machine, so poll until the count catches up; from 5 ticks on, fewer workers
    # than WORKERS can no longer reach the lower bound, and no scrape may ever exceed the upper one.
    def ready_seconds() -> float:
        return Scrape.of(exercise.url).value("ckptserve_worker_ready_seconds_total", ModelName=MODEL)

    first, began = ready_seconds(), time.monotonic()
    seen: list[tuple[float, float]] = []

    def caught_up() -> bool:
        grown, window = ready_seconds() - first, time.monotonic() - began
        seen.append((round(window, 1), grown))
        assert grown <= WORKERS * (window + 1.5 * READY_TICK_S), seen  # never faster than the workers
        return window >= 5 * READY_TICK_S and grown >= WORKERS * (window - 1.5 * READY_TICK_S)

    def what() -> str:
        return f"{WORKERS} workers' ready time; last (window s, grown s): {seen[-5:]}"

    wait_until(caught_up, what, timeout_s=5 * READY_TICK_S + 120, poll_s=1.0)


# --- JSON logs ----------------------------------------------------------------------------------


def _json_lines(exercise: Exercise) -> list[dict]:
    lines = []
    for line in (exercise.server.settings.logs / "model_log.log").read_text().splitlines():
        _, sep, message = line.partition(" - ")
        if sep and message.startswith("{") and '"model": "' + MODEL in message:
            lines.append(json.loads(message))
    return lines


def test_json_logs_name_model_checkpoint_and_request_ids(exercise: Exercise) -> None:
    lines = _json_lines(exercise)
    ready = [e for e in lines if e["logger"] == "ckptserve.handler" and e["message"].startswith("ready:")]
    assert len(ready) == WORKERS
    assert all(e["checkpoint"] == f"epoch=1@{exercise.shas[1]}" for e in ready)
    failed = [e for e in lines if e["message"].startswith("request failed:")]
    assert sorted(e["message"].split()[2:4] for e in failed) == sorted(
        [str(status), f"{reason}:"] for _, _, status, reason in BAD
    )
    # TorchServe answers with the id it gave the request (x-request-id): the log line names the same one.
    sent_ids = set(exercise.request_ids.values())
    assert len(sent_ids) == len(BAD) and all(sent_ids)
    assert {e["request_id"] for e in failed} == sent_ids
    swapped = [e for e in lines if e["message"].startswith("reload: now serving")]
    assert len(swapped) == WORKERS and all(e["checkpoint"].startswith("epoch=2@") for e in swapped)
    rejected = [e for e in lines if e["message"].startswith("reload: rejected") and e["level"] == "WARNING"]
    assert len(rejected) == WORKERS
