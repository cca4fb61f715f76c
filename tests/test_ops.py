"""Operations: the health check and the root admins' job monitor."""
from __future__ import annotations

from rq.registry import FailedJobRegistry

from app.extensions import rq
from app.queue import enqueue_unique
from tests.factories import admin_email, make_root, make_tenant
from tests.support.queues import run_jobs
from tests.support.web import csrf_from, login


def test_root_sees_queues_workers_and_failed_jobs_and_can_requeue(client, auth, plans):
    make_root()
    auth.login("root@example.com")
    enqueue_unique("default", "tests.support.jobs.always_fails", "disk on fire", job_id="doomed-1")
    run_jobs(("default",))
    page = client.get("/admin/jobs")
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert "doomed-1" in html and "boom: disk on fire" in html and "never seen" in html
    resp = client.post("/admin/jobs/failed/doomed-1/requeue", data={"csrf_token": csrf_from(html)})
    assert resp.status_code == 303
    assert rq.queue("default").count == 1 and FailedJobRegistry("default", connection=rq.connection).count == 0
    again = client.post("/admin/jobs/failed/doomed-1/requeue", data={"csrf_token": csrf_from(html)},
                        follow_redirects=True)
    assert "No failed job doomed-1" in again.get_data(as_text=True)


def test_job_monitor_is_root_only(client, auth, plans):
    tenant = make_tenant()
    auth.login(admin_email(tenant))
    assert client.get("/admin/jobs").status_code == 403


def test_healthz_tells_an_anonymous_caller_only_the_status(client, plans):
    resp = client.get("/healthz")
    assert resp.status_code == 200 and resp.get_json() == {"status": "ok"}


def test_healthz_tells_a_tenant_admin_only_the_status(client, auth, plans):
    auth.login(admin_email(make_tenant()))
    assert client.get("/healthz").get_json() == {"status": "ok"}


def test_healthz_gives_root_the_details(client, auth, plans):
    make_root()
    auth.login("root@example.com")
    body = client.get("/healthz").get_json()
    assert body["status"] == "ok" and body["checks"] == {"database": "ok", "redis": "ok"}
    assert set(body["queues"]) == {"billing", "webhooks", "default", "mail"}
    assert "scheduler_heartbeat_age_s" in body and "oldest_pending_webhook_age_s" in body


def test_healthz_degrades_when_redis_is_down(app, client, plans):
    make_root()
    root = app.test_client()
    login(root, "root@example.com")
    app.config["REDIS_URL"] = "redis://127.0.0.1:9/0"
    app.extensions.pop("redis_connection", None)
    anonymous = client.get("/healthz")
    assert anonymous.status_code == 503 and anonymous.get_json() == {"status": "degraded"}
    resp = root.get("/healthz")
    assert resp.status_code == 503 and resp.get_json()["checks"]["redis"].startswith("error")
    assert resp.get_json()["checks"]["database"] == "ok"


def test_healthz_gives_a_service_token_the_details_but_not_a_revoked_or_made_up_one(client, plans):
    from app.services.integrations import create_token, revoke_token

    token, plaintext = create_token("monitoring", ["entitlements:read"])
    detailed = client.get("/healthz", headers={"Authorization": f"Bearer {plaintext}"}).get_json()
    assert detailed["status"] == "ok" and "queues" in detailed and "checks" in detailed
    made_up = client.get("/healthz", headers={"Authorization": "Bearer sp_svc_made_up"}).get_json()
    assert made_up == {"status": "ok"}
    revoke_token(token.id)
    assert client.get("/healthz", headers={"Authorization": f"Bearer {plaintext}"}).get_json() == {"status": "ok"}
