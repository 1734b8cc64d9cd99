"""Prometheus metrics, served on BentoML's ``/metrics`` next to its own.

BentoML runs the ``prometheus_client`` multiprocess collector over every
worker, so these are module-level metrics like any other; gauges say how
values from several workers combine.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

#: Run and queue-wait buckets, in seconds: from quick tiny edits to the 10-minute deadline.
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 450, 600)
STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10)

queue_depth = Gauge("imgedit_queue_depth", "Requests waiting for the model (not running).", multiprocess_mode="livesum")
runs_in_flight = Gauge(
    "imgedit_runs_in_flight", "Pipeline runs in progress (never more than one per worker).", multiprocess_mode="livesum"
)
most_runs_at_once = Gauge(
    "imgedit_runs_in_flight_max",
    "The most pipeline runs a worker has ever had in progress at once (1 when all is well).",
    multiprocess_mode="max",
)
queue_wait = Histogram(
    "imgedit_queue_wait_seconds", "Time from admission to the start of the run.", buckets=DURATION_BUCKETS
)
run_time = Histogram(
    "imgedit_run_seconds",
    "Time each run took: a request's pipeline calls, or one batched call of fused requests; by served model.",
    ["model"],
    buckets=DURATION_BUCKETS,
)
step_time = Histogram("imgedit_step_seconds", "Seconds per denoising step.", buckets=STEP_BUCKETS)
images = Counter("imgedit_images", "Images produced, by served model.", ["model"])
encoding_cache_hits = Counter(
    "imgedit_encoding_cache_hits", "Encodings (of a prompt, or of reference images) found kept from an earlier edit."
)
encoding_cache_misses = Counter(
    "imgedit_encoding_cache_misses", "Encodings (of a prompt, or of reference images) computed, not found kept."
)
denoiser_calls = Counter(
    "imgedit_denoiser_calls",
    "Forward calls of the denoiser (transformer or UNet) that edits ran, once per call however many ranks ran it.",
)
rejections = Counter("imgedit_rejections", "Requests refused, by reason.", ["reason"])
cancellations = Counter("imgedit_cancellations", "Runs stopped or dropped before finishing, by reason.", ["reason"])
parallel_degree = Gauge(
    "imgedit_parallel_degree",
    "Ranks (processes, one device each) that run every edit together: 1 without context or tensor parallelism.",
    multiprocess_mode="max",
)
model_info = Gauge(
    "imgedit_model_info",
    "The served model and its options (value 1).",
    ["model", "served_name", "family", "pipeline", "device", "dtype", "options"],
    multiprocess_mode="max",
)
model_parameter_bytes = Gauge(
    "imgedit_model_parameter_bytes",
    "Bytes each model component's parameters and buffers occupy as loaded (quantized storage measured), per worker;"
    " with several models, summed over them.",
    ["component"],
    multiprocess_mode="max",
)
model_swaps = Counter(
    "imgedit_model_swaps",
    "Served models moved onto the device (IMGEDIT_RESIDENT_MODELS), by the model brought in: between runs, and at "
    "start-up for the warm-ups.",
    ["model"],
)
model_swap_time = Histogram(
    "imgedit_model_swap_seconds",
    "Time each swap took: models moved to host memory, then the next one onto the device.",
    buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60),
)
#: The exported names, help texts and labels are what dashboards know: they keep vLLM's word, "adapter".
loras_loaded = Gauge(
    "imgedit_lora_adapters", "LoRA adapters loaded and choosable per request.", multiprocess_mode="max"
)
jobs_ended = Counter("imgedit_jobs", "Background jobs ended, by status (completed, failed, cancelled).", ["status"])
webhook_attempts = Counter(
    "imgedit_webhook_attempts",
    "Webhook deliveries tried, by outcome (delivered, or failed: to be retried or given up).",
    ["outcome"],
)
idempotent_replays = Counter(
    "imgedit_idempotent_replays", "Kept answers replayed to a retry with the same Idempotency-Key."
)
lora_requests = Counter("imgedit_lora_requests", "Requests that chose each LoRA adapter.", ["adapter"])
lora_switch_time = Histogram(
    "imgedit_lora_switch_seconds",
    "Time to switch the active LoRA adapters between two runs that chose different ones.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)


def metrics_table() -> str:
    """The operations page's table of these metrics, in Markdown: name (as exported), type, labels, meaning."""
    rows = ["| Metric | Type | Labels | Meaning |", "|---|---|---|---|"]
    for metric in (value for value in globals().values() if isinstance(value, MetricWrapperBase)):
        name = metric._name + ("_total" if metric._type == "counter" else "")
        labels = ", ".join(f"`{label}`" for label in metric._labelnames)
        rows.append(f"| `{name}` | {metric._type} | {labels} | {metric._documentation} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(metrics_table(), end="")
