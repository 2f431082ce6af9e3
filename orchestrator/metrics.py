"""The orchestrator's Prometheus metrics (names start with ``moe2_``), in a per-server registry.

Fed from three places: the gRPC interceptor (``edge_node.metrics.MetricsInterceptor``, requests
by RPC and status), the HTTP API (requests by route and status) and the core's ``Observer``
hooks (plans, answered requests), so gRPC and HTTP requests are counted by the same code.
Budget violations are measured against the budgets the request was served under (its own, else
the cluster default): delay when the orchestrator's latency exceeded the delay budget, energy
when the known total exceeded the energy budget (an incomplete energy total is not judged).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from edge_node.metrics import LATENCY_BUCKETS_S, RpcInstruments
from orchestrator.core import AskResult
from orchestrator.registry import Registry


class OrchestratorMetrics:
    """Every ``moe2_*`` metric; implements ``orchestrator.core.Observer``."""

    def __init__(self, registry: Registry) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        target = self.registry
        self.rpc = RpcInstruments(
            requests=Counter(
                "moe2_grpc_requests_total",
                "gRPC requests finished, by method and status code.",
                ["rpc", "code"],
                registry=target,
            ),
            duration=Histogram(
                "moe2_grpc_request_duration_seconds",
                "gRPC request handling time (every outcome), by method.",
                ["rpc"],
                buckets=LATENCY_BUCKETS_S,
                registry=target,
            ),
            in_flight=Gauge(
                "moe2_grpc_in_flight_requests", "gRPC requests being handled now.", registry=target
            ),
        )
        self.http = RpcInstruments(
            requests=Counter(
                "moe2_http_requests_total",
                "HTTP API requests finished, by route and HTTP status code.",
                ["rpc", "code"],
                registry=target,
            ),
            duration=Histogram(
                "moe2_http_request_duration_seconds",
                "HTTP API request handling time (every outcome), by route.",
                ["rpc"],
                buckets=LATENCY_BUCKETS_S,
                registry=target,
            ),
            in_flight=Gauge(
                "moe2_http_in_flight_requests",
                "HTTP API requests being handled now.",
                registry=target,
            ),
        )
        self._latency = Histogram(
            "moe2_ask_latency_seconds",
            "Answered requests: received to answered at the orchestrator (any transport).",
            buckets=LATENCY_BUCKETS_S,
            registry=target,
        )
        self._encode_gate = Histogram(
            "moe2_encode_gate_seconds",
            "Answered requests: prompt encoder plus gate (the fine level).",
            buckets=LATENCY_BUCKETS_S,
            registry=target,
        )
        self._plan = Histogram(
            "moe2_plan_seconds",
            "Coarse-level plans (Ask and Plan), cache hits included.",
            buckets=LATENCY_BUCKETS_S,
            registry=target,
        )
        self._recomputations = Counter(
            "moe2_plan_recomputations_total",
            "Plans solved rather than served from the cache (new budgets, fleet or profile).",
            registry=target,
        )
        self._answered = Counter(
            "moe2_answered_requests_total", "Requests answered (any transport).", registry=target
        )
        self._selections = Counter(
            "moe2_expert_selections_total",
            "Times the fine level dispatched an expert for a request.",
            ["expert"],
            registry=target,
        )
        self._outcomes = Counter(
            "moe2_expert_outcomes_total",
            "Dispatched experts by outcome (ok, deadline, error).",
            ["expert", "outcome"],
            registry=target,
        )
        self._tokens = Counter(
            "moe2_tokens_total",
            "Tokens processed by the experts that answered: kind=prompt or completion.",
            ["expert", "kind"],
            registry=target,
        )
        self._energy = Counter(
            "moe2_energy_joules_total",
            "Energy the experts reported, by expert and source (measured-* or estimated).",
            ["expert", "source"],
            registry=target,
        )
        self._violations = Counter(
            "moe2_budget_violations_total",
            "Answered requests that exceeded their budget, by budget (delay, energy).",
            ["budget"],
            registry=target,
        )
        for budget in ("delay", "energy"):
            self._violations.labels(budget=budget)  # exported at 0 before the first violation
        self._experts_up = Gauge(
            "moe2_experts_up", "Experts whose node is serving.", registry=target
        )
        self._experts_up.set_function(lambda: float(len(registry.up())))
        self._experts = Gauge("moe2_experts", "Experts registered (up or not).", registry=target)
        self._experts.set_function(lambda: float(len(registry.all())))
        target.register(_ExpertGauges(registry))

    def planned(self, seconds: float, *, recomputed: bool) -> None:
        """One coarse-level plan."""
        self._plan.observe(seconds)
        if recomputed:
            self._recomputations.inc()

    def answered(self, result: AskResult) -> None:
        """One answered request: latency, per-expert selection, outcome, tokens and energy."""
        self._answered.inc()
        self._latency.observe(result.latency_s)
        self._encode_gate.observe(result.encode_s + result.gate_s)
        for outcome in result.experts:
            self._selections.labels(expert=outcome.expert).inc()
            self._outcomes.labels(expert=outcome.expert, outcome=outcome.outcome).inc()
            if outcome.prompt_tokens is not None:
                self._tokens.labels(expert=outcome.expert, kind="prompt").inc(outcome.prompt_tokens)
            if outcome.completion_tokens is not None:
                self._tokens.labels(expert=outcome.expert, kind="completion").inc(
                    outcome.completion_tokens
                )
            energy = outcome.energy
            if energy is not None and energy.energy_j is not None:
                self._energy.labels(expert=outcome.expert, source=energy.source).inc(
                    energy.energy_j
                )
        if not result.within_delay_budget:
            self._violations.labels(budget="delay").inc()
        if result.within_energy_budget is False:
            self._violations.labels(budget="energy").inc()


class _ExpertGauges(Collector):
    """Per-expert gauges read from the registry at scrape time (experts come and go)."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[GaugeMetricFamily]:
        in_flight = GaugeMetricFamily(
            "moe2_expert_in_flight_requests",
            "Calls to each expert's node in progress now.",
            labels=["expert"],
        )
        up = GaugeMetricFamily(
            "moe2_expert_up", "1 while the expert's node is serving, else 0.", labels=["expert"]
        )
        for expert in self._registry.all():
            in_flight.add_metric([expert.name], float(expert.in_flight))
            up.add_metric([expert.name], 1.0 if expert.health == "up" else 0.0)
        yield in_flight
        yield up

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())  # names depend on nothing; no duplicate check needed at registration
