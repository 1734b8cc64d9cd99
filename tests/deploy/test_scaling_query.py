"""The autoscaler's Prometheus query, run by ``promtool test rules`` (Debian's ``prometheus``) on synthetic series.

KEDA's Prometheus trigger with ``metricType: AverageValue`` makes the HPA ask
for ``ceil(query / threshold)`` replicas (then its bounds, rate limits and
stabilization windows apply). The query and threshold are read from the
rendered ScaledObject, so this tests what is deployed: over every mix of
idle, busy and queueing pods (and a pod not scraped yet, and another
namespace's pods), the query returns one sample, the replicas it asks for
match a model written here, are never fewer than the busy GPUs, and exceed
the pods when every GPU is busy and requests wait.
"""

from __future__ import annotations

import itertools
import math
import subprocess

import yaml

from tests.deploy.support import environment, one, render, tool

#: What one pod reports each minute: None (not scraped: still loading, or gone), or (runs in flight, queue depth).
STATES = [None, *itertools.product((0, 1), (0, 1, 3))]
PODS = 3


def promtool() -> str:
    return tool("promtool", "Debian's `prometheus` package has it: `make system-deps`")


def test_the_scaling_query_asks_for_a_replica_per_busy_gpu_and_more_when_requests_wait(tmp_path):
    objects = render("shared-volume")
    trigger = one(objects, "ScaledObject")["spec"]["triggers"][0]
    query, threshold = trigger["metadata"]["query"], float(trigger["metadata"]["threshold"])
    namespace = one(objects, "Deployment")["metadata"]["namespace"]
    gpus_per_pod = int(
        environment(one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0])["IMGEDIT_WORKERS"]
    )
    minutes = list(itertools.product(STATES, repeat=PODS))  # one minute per combination: 343 of them

    def values(pod: int, field: int) -> str:
        return " ".join("stale" if states[pod] is None else str(states[pod][field]) for states in minutes)

    series = []
    for pod in range(PODS):
        labels = f'namespace="{namespace}", pod="imgedit-{pod}", container="imgedit"'
        series.append({"series": f"imgedit_runs_in_flight{{{labels}}}", "values": values(pod, 0)})
        series.append({"series": f"imgedit_queue_depth{{{labels}}}", "values": values(pod, 1)})
    # Another deployment's busy pod in another namespace: none of this deployment's business.
    other = 'namespace="elsewhere", pod="imgedit-0", container="imgedit"'
    series.append({"series": f"imgedit_runs_in_flight{{{other}}}", "values": f"1x{len(minutes) - 1}"})
    series.append({"series": f"imgedit_queue_depth{{{other}}}", "values": f"5x{len(minutes) - 1}"})

    desired = f"ceil(({query}) / {threshold:g})"
    selector = f'{{namespace="{namespace}"}}'
    busy = f"sum(imgedit_runs_in_flight{selector})"
    pods = f"count(imgedit_runs_in_flight{selector})"
    waiting = f"sum(imgedit_queue_depth{selector})"
    span = f"[{len(minutes)}m:1m]"
    checks = []
    for minute, states in enumerate(minutes):
        present = [state for state in states if state is not None]
        if not present:  # no pod reports: the query is empty, and KEDA (ignoreNullValues) reads 0
            checks.append({"expr": desired, "eval_time": f"{minute}m", "exp_samples": []})
            continue
        load = sum(runs + queue for runs, queue in present)
        checks.append(
            {
                "expr": desired,
                "eval_time": f"{minute}m",
                "exp_samples": [{"labels": "{}", "value": math.ceil(load / threshold)}],
            }
        )
    end = f"{len(minutes) - 1}m"
    checks += [
        # Never fewer GPUs than are busy.
        {"expr": f"count_over_time(({desired} * {gpus_per_pod} < {busy}){span})", "eval_time": end, "exp_samples": []},
        # Every GPU busy and requests waiting: more pods than there are.
        {
            "expr": f"count_over_time(({desired} <= {pods} and on() {waiting} > 0"
            f" and on() {busy} >= {pods} * {gpus_per_pod}){span})",
            "eval_time": end,
            "exp_samples": [],
        },
        # KEDA refuses a query that returns more than one sample.
        {"expr": f"count_over_time((count({query}) > 1){span})", "eval_time": end, "exp_samples": []},
    ]
    rules = {
        "groups": [{"name": "imgedit-scaling", "rules": [{"record": "imgedit:desired_replicas", "expr": desired}]}]
    }
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
    tests = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": series, "promql_expr_test": checks}],
    }
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(tests, width=1000))
    checked = subprocess.run(
        [promtool(), "test", "rules", "tests.yml"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout
    # The exact values cover both interesting cases: some minutes with every GPU busy and requests waiting.
    assert any(s and all(p is not None and p[0] == 1 for p in s) and any(p[1] for p in s) for s in minutes)
