"""Every Prometheus metric of the service, defined once, under the prefix `inspect_edge_`.

Each service instance has its own CollectorRegistry, so tests can build several
apps in one process. Counters that /api/stats also shows (frames, drops,
defects, reconnects) are read at scrape time from the same counts the capture
thread and the pipeline keep, so the two endpoints cannot disagree. Latencies
are histograms in seconds with buckets from 1 ms to 5 s. Labels come only from
small fixed sets: camera names (from the config), drop reasons, stage names, the
model's class names, outcomes. Everything that belongs to one camera carries its
`camera` label; what belongs to the whole process (the model, worker threads,
the evidence store, the webhook, hot swaps) does not.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, Info, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from inspect_edge.pipeline import STAGES, FrameResult
from inspect_edge.sources.capture import DROP_REASONS

PREFIX = "inspect_edge"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class _StateCollector:
    """Counters and gauges read from the live objects at scrape time."""

    def __init__(self, cameras, pipeline, events, threads=None, swap=None) -> None:
        self.cameras, self.pipeline, self.events, self.threads, self.swap = cameras, pipeline, events, threads, swap

    def describe(self):
        return []  # families are built per scrape; nothing to pre-register

    def collect(self):
        p = PREFIX
        captured = CounterMetricFamily(f"{p}_frames_captured", "Frames read from the camera.", labels=["camera"])
        processed = CounterMetricFamily(f"{p}_frames_processed", "Frames that went through the model.", labels=["camera"])
        dropped = CounterMetricFamily(f"{p}_frames_dropped", "Captured frames not processed, by reason.",
                                      labels=["camera", "reason"])
        up = GaugeMetricFamily(f"{p}_camera_up", "1 while the camera delivers, 0 while it is lost or ended.", labels=["camera"])
        reconnects = CounterMetricFamily(f"{p}_camera_reconnects", "Successful reconnections after a lost camera.",
                                         labels=["camera"])
        defects = CounterMetricFamily(f"{p}_defects", "Physical defects found, by class (one per defect, however many frames see it).",
                                      labels=["camera", "class"])
        detections = CounterMetricFamily(f"{p}_defect_detections", "Defects seen per frame, by class (one defect in ten frames counts ten).",
                                         labels=["camera", "class"])
        metres = CounterMetricFamily(f"{p}_strip_metres", "Metres of strip inspected (line speed x time with frames); "
                                     "defects per metre = rate(defects_total) / rate(strip_metres_total).", labels=["camera"])
        for name, capture in self.cameras.items():
            cap, pipe = capture.counts(), self.pipeline.counts(name)
            captured.add_metric([name], cap.captured)
            processed.add_metric([name], pipe.processed)
            for reason in DROP_REASONS:
                dropped.add_metric([name, reason], cap.dropped.get(reason, 0) + (pipe.errors if reason == "error" else 0))
            up.add_metric([name], 1 if cap.up else 0)
            reconnects.add_metric([name], cap.reconnects)
            for cls, n in pipe.defects.items():
                defects.add_metric([name, cls], n)
            for cls, n in pipe.detections.items():
                detections.add_metric([name, cls], n)
            metres.add_metric([name], pipe.strip_metres)
        yield from (captured, processed, dropped, up, reconnects)
        yield GaugeMetricFamily(f"{p}_model_loaded", "1 once the model is loaded and warmed up.",
                                value=1 if self.pipeline.ready.is_set() else 0)
        if self.threads is not None:
            restarts = CounterMetricFamily(f"{p}_thread_restarts", "Worker threads restarted after an unexpected exception.",
                                           labels=["thread"])
            healthy = GaugeMetricFamily(f"{p}_thread_healthy", "0 once a worker thread died or ran out of restarts (/healthz 503).",
                                        labels=["thread"])
            for name, t in self.threads().items():
                st = t.status()
                restarts.add_metric([name], st["restarts"])
                healthy.add_metric([name], 1 if st["healthy"] else 0)
            yield restarts
            yield healthy
        if self.swap is not None:
            st = self.swap.status()
            yield CounterMetricFamily(f"{p}_model_swaps", "Promotions and rollbacks carried out between frames.",
                                      value=st["swaps"])
            shadow = st["shadow"]
            if shadow is not None:
                yield CounterMetricFamily(f"{p}_shadow_frames", f"Frames the candidate {st['candidate']} also ran on.",
                                          value=shadow["frames"])
                dice = GaugeMetricFamily(f"{p}_shadow_dice", "Candidate vs production mask Dice over the shadowed frames.",
                                         labels=["class", "candidate"])
                for name, d in shadow["dice_vs_production"].items():
                    dice.add_metric([name, st["candidate"]], d)
                yield dice
                yield GaugeMetricFamily(f"{p}_shadow_defect_count_diff", "Candidate minus production defects, summed over shadowed frames.",
                                        value=shadow["defect_count_diff"])
        yield from (defects, detections)
        if self.pipeline.tracking.strip_speed_m_s:
            yield metres
        if self.events is not None:
            ev = self.events.counts()
            events = CounterMetricFamily(f"{p}_events", "Physical defects written to the event log.", labels=["camera"])
            for name in self.cameras:
                events.add_metric([name], ev["by_camera"].get(name, 0))
            yield events
            yield CounterMetricFamily(f"{p}_event_log_errors", "Events that could not be written to events.jsonl (full or read-only disk).",
                                      value=ev["log_errors"])
            evidence = CounterMetricFamily(f"{p}_evidence", "Evidence sets, by outcome.", labels=["outcome"])
            for outcome, n in ev["evidence"].items():
                evidence.add_metric([outcome], n)
            yield evidence
            yield GaugeMetricFamily(f"{p}_evidence_bytes", "Bytes of evidence kept on disk.",
                                    value=ev["evidence_bytes"])
            webhook = CounterMetricFamily(f"{p}_webhook_calls", "Webhook calls, by outcome.", labels=["outcome"])
            for outcome, n in ev["webhook"].items():
                webhook.add_metric([outcome], n)
            yield webhook


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        p = PREFIX
        self.latency = Histogram(f"{p}_capture_to_result_seconds",
                                 "Time from frame capture to its defects being known (the frame's age then).",
                                 ["camera"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.stage = Histogram(f"{p}_stage_duration_seconds", "Time per frame in each pipeline stage "
                               "(inference: the frame's share of its batch, by tiles).",
                               ["camera", "stage"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.model = Info(f"{p}_model", "The model being served.", registry=self.registry)
        self._area_values: dict[str, dict[str, float]] = {}

    def bind(self, cameras, pipeline, events=None, threads=None, swap=None) -> None:
        """`cameras`: {name: LatestFrameCapture}; `threads`: a callable giving {name: SupervisedThread}, read at every scrape."""
        for name in cameras:  # every series exists from the first scrape, at zero
            self.latency.labels(name)
            for s in STAGES:
                self.stage.labels(name, s)
        self.registry.register(_StateCollector(cameras, pipeline, events, threads, swap))
        self.registry.register(_AreaCollector(self))

    def set_model(self, model_version: str, backend: str, precision: str) -> None:
        self.model.info({"model_version": model_version, "backend": backend, "precision": precision})

    def observe(self, result: FrameResult, classes) -> None:
        self.latency.labels(result.camera).observe(result.latency_s)
        for s in STAGES:
            self.stage.labels(result.camera, s).observe(result.stage_s[s])
        self._area_values[result.camera] = dict(zip(classes, result.area_share))

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _AreaCollector:
    def __init__(self, metrics: ServiceMetrics) -> None:
        self.metrics = metrics

    def describe(self):
        return []

    def collect(self):
        g = GaugeMetricFamily(f"{PREFIX}_defect_area_ratio",
                              "Share of the camera's last processed frame's pixels flagged as each class.",
                              labels=["camera", "class"])
        for camera, shares in list(self.metrics._area_values.items()):
            for name, share in shares.items():
                g.add_metric([camera, name], share)
        yield g
