import pytest

from imgedit.durable import jobs as jobs_module
from imgedit.durable.database import Database
from imgedit.durable.jobs import LEASE_SECONDS, WORKER_LOST, JobTable

NOW = 1_800_000_000.0


@pytest.fixture
def database(tmp_path):
    return Database(tmp_path)


def table(database, runner="a", ttl=100, model="m"):
    return JobTable(database, runner, ttl, model)


def new_job(jobs, owner="o", webhook=None, now=NOW):
    return jobs.create(owner=owner, body=b"body", content_type="application/json", webhook_url=webhook, now=now)


def test_a_job_runs_and_ends_with_its_result(database):
    jobs = table(database)
    job = new_job(jobs)
    assert (job.status, job.progress, job.model, job.created_at) == ("queued", 0, "m", int(NOW))
    jobs.start(job.id)
    jobs.progress(job.id, 40)
    assert jobs.get(job.id, "o").status == "in_progress"
    assert jobs.get(job.id, "o").progress == 40
    assert jobs.end(job.id, "completed", NOW + 5, result={"created": 1, "data": []}, images=["x.png"])
    ended = jobs.get(job.id, "o")
    assert (ended.status, ended.progress) == ("completed", 100)
    assert (ended.completed_at, ended.expires_at) == (NOW + 5, NOW + 105)
    assert ended.result == {"created": 1, "data": []} and ended.images == ["x.png"]
    row = database.rows("SELECT body FROM jobs WHERE id = ?", (job.id,))[0]
    assert row["body"] is None  # the request is not kept past its job's end
    assert not jobs.end(job.id, "failed", NOW + 6)  # an ended job stays as it ended


def test_jobs_belong_to_their_owner_and_ids_are_checked_first(database):
    jobs = table(database)
    job = new_job(jobs, owner="alice")
    assert jobs.get(job.id, "bob") is None
    assert jobs.request_cancel(job.id, "bob", NOW) is None
    assert jobs.delete(job.id, "bob") is None
    assert jobs.get(job.id, "alice") is not None
    for wrong in ("", "edit_", job.id.upper(), job.id + "0", "edit_' OR 1=1 --", "x" * 100_000):
        assert jobs.get(wrong, "alice") is None


def test_a_queued_job_of_a_dead_worker_is_claimed_and_a_running_one_fails(database):
    dead, alive = table(database, "dead"), table(database, "alive")
    queued, running = new_job(dead), new_job(dead)
    dead.start(running.id)
    assert alive.reclaim(NOW + LEASE_SECONDS / 2) == []  # the lease still holds
    claimed = alive.reclaim(NOW + LEASE_SECONDS + 1)
    assert [row.id for row in claimed] == [queued.id]
    assert claimed[0].body == b"body" and claimed[0].content_type == "application/json"
    lost = alive.get(running.id, "o")
    assert (lost.status, lost.error) == ("failed", WORKER_LOST)
    assert not dead.end(queued.id, "completed", NOW + 20)  # the dead worker's late word is not taken
    assert alive.end(queued.id, "completed", NOW + 20)


def test_jobs_of_another_model_are_left_alone(database):
    new_job(table(database, "dead", model="other"))
    assert table(database, "alive").reclaim(NOW + 1000) == []


def test_a_worker_of_several_models_claims_the_jobs_of_each(database):
    dead = table(database, "dead")
    job = dead.create(owner="o", body=b"b", content_type="c", webhook_url=None, now=NOW, model="klein")
    assert job.model == "klein"
    alive = table(database, "alive")
    alive.models = ("m", "klein")
    assert [row.id for row in alive.reclaim(NOW + 1000)] == [job.id]


def test_renewing_keeps_the_claim_and_reports_cancels(database):
    jobs, other = table(database, "a"), table(database, "b")
    job = new_job(jobs)
    assert jobs.renew([job.id], NOW + LEASE_SECONDS - 1) == []
    assert other.reclaim(NOW + LEASE_SECONDS + 1) == []  # renewed
    assert other.request_cancel(job.id, "o", NOW).status == "queued"  # a live worker holds it: it is asked
    assert jobs.renew([job.id], NOW + 2) == [job.id]
    assert jobs.end(job.id, "cancelled", NOW + 3)
    assert jobs.get(job.id, "o").status == "cancelled"


def test_a_cancel_of_a_job_nobody_holds_ends_it_at_once(database):
    jobs = table(database)
    job = new_job(jobs)
    jobs.requeue(job.id)
    assert jobs.request_cancel(job.id, "o", NOW).status == "cancelled"


def test_requeued_jobs_are_claimed_again_at_once(database):
    jobs = table(database, "stopping")
    job = new_job(jobs)
    jobs.start(job.id)
    jobs.requeue(job.id)
    claimed = table(database, "next").reclaim(NOW)
    assert [row.id for row in claimed] == [job.id]


def test_delete_returns_the_images_and_a_running_job_finds_its_row_gone(database):
    jobs = table(database)
    job = new_job(jobs)
    assert jobs.delete(job.id, "o") == []
    assert not jobs.end(job.id, "completed", NOW)
    assert jobs.delete(job.id, "o") is None
    done = new_job(jobs)
    jobs.end(done.id, "completed", NOW, result={}, images=["a.png", "b.png"])
    assert jobs.delete(done.id, "o") == ["a.png", "b.png"]


def test_the_sweep_deletes_jobs_past_their_time(database):
    jobs = table(database, ttl=10)
    old, recent, running = new_job(jobs), new_job(jobs), new_job(jobs)
    jobs.end(old.id, "completed", NOW, result={}, images=["old.png"])
    jobs.end(recent.id, "completed", NOW + 50, result={})
    assert jobs.sweep(NOW + 20) == ["old.png"]
    assert jobs.get(old.id, "o") is None
    assert jobs.get(recent.id, "o") is not None and jobs.get(running.id, "o") is not None


def test_a_webhook_is_due_when_its_job_ends_and_retried_with_the_same_event(database, monkeypatch):
    monkeypatch.setattr(jobs_module, "WEBHOOK_DELAYS", (1.0, 2.0))
    jobs, other = table(database, "a"), table(database, "b")
    job = new_job(jobs, webhook="https://hooks.example/x")
    silent = new_job(jobs)
    assert jobs.due_webhooks(NOW + 100) == []
    jobs.end(job.id, "failed", NOW + 10, error={"code": "x", "message": "y"})
    jobs.end(silent.id, "completed", NOW + 10, result={})
    [first] = jobs.due_webhooks(NOW + 10)
    assert first.url == "https://hooks.example/x" and first.attempts == 0
    assert first.event["type"] == "image.edit.failed" and first.event["data"] == {"id": job.id}
    assert first.event["object"] == "event" and first.event["id"].startswith("evt_")
    assert other.due_webhooks(NOW + 11) == []  # claimed by the worker sending it
    assert jobs.webhook_tried(first, delivered=False, now=NOW + 12)
    assert jobs.due_webhooks(NOW + 12.5) == []
    [second] = other.due_webhooks(NOW + 13)
    assert second.event == first.event and second.attempts == 1
    assert jobs.webhook_tried(second, delivered=False, now=NOW + 14)
    [third] = jobs.due_webhooks(NOW + 16)
    assert not jobs.webhook_tried(third, delivered=False, now=NOW + 17)  # one more attempt than delays
    assert jobs.due_webhooks(NOW + 10_000) == []


def test_a_delivered_webhook_is_not_sent_again(database):
    jobs = table(database)
    job = new_job(jobs, webhook="https://hooks.example/x")
    jobs.end(job.id, "cancelled", NOW)
    [webhook] = jobs.due_webhooks(NOW)
    assert webhook.event["type"] == "image.edit.cancelled"
    assert not jobs.webhook_tried(webhook, delivered=True, now=NOW)
    assert jobs.due_webhooks(NOW + 10_000) == []


def test_workers_share_the_database_file(tmp_path):
    first, second = table(Database(tmp_path), "a"), table(Database(tmp_path), "b")
    job = new_job(first)
    assert second.get(job.id, "o").status == "queued"
    assert (tmp_path / "imgedit.sqlite3").stat().st_mode & 0o777 == 0o600
