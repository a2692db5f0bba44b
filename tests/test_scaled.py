"""The scaled-out mode end to end: 2 API processes and 2 worker processes on PostgreSQL and
Redis, all real processes on 127.0.0.1."""

from __future__ import annotations

import threading
import time

import httpx

from tests.conftest import ImageServer, make_image, wait_until_done
from tests.fake_s3 import ACCESS_KEY, REGION, SECRET_KEY

T2V = "/api/v3/google/veo3.1-fast/text-to-video"


def test_two_apis_two_workers(cluster, images: ImageServer, s3_endpoint: str,  # type: ignore[no-untyped-def]
                              bucket: str, s3_admin) -> None:
    # Videos go to S3 (moto's server on 127.0.0.1), served by presigned URLs.
    cluster.env.update({
        "REELGATE_STORAGE_URL": f"s3://{bucket}/videos",
        "REELGATE_S3_ENDPOINT_URL": s3_endpoint,
        "REELGATE_S3_REGION": REGION,
        "REELGATE_S3_ACCESS_KEY_ID": ACCESS_KEY,
        "REELGATE_S3_SECRET_ACCESS_KEY": SECRET_KEY,
    })
    api1, api2 = cluster.api(), cluster.api()
    workers = [cluster.worker(), cluster.worker()]
    key = api1.create_key("scaled")
    with api1.client(key) as c1, api2.client(key) as c2:
        # Created on one API process, read on the other, run by some worker.
        bodies = {
            "text-to-video": {"prompt": "scaled out", "duration": 4},
            "image-to-video": {"prompt": "pan", "duration": 4,
                               "image": images.add("/s.png", make_image((9, 99, 199)))},
            "reference-to-video": {"prompt": "refs", "generate_audio": False,
                                   "images": [images.add("/r.png", make_image((200, 9, 9)))]},
        }
        ids = []
        for scene, body in bodies.items():
            r = c1.post(f"/api/v3/google/veo3.1/{scene}", json=body)
            assert r.status_code == 200, r.text
            ids.append(r.json()["data"]["id"])
        for pid in ids:
            done = wait_until_done(c2, pid, timeout=90)
            assert done["status"] == "completed", done
            assert done["outputs"][0].startswith(f"{s3_endpoint}/{bucket}/videos/")
            video = httpx.get(done["outputs"][0])
            assert video.status_code == 200 and video.content[4:8] == b"ftyp"
            # Stored before "completed" was written: the object is whole in the bucket.
            head = s3_admin.head_object(Bucket=bucket, Key=f"videos/{pid[:2]}/{pid}.mp4")
            assert head["ContentLength"] == len(video.content)
        # Sync mode on API 2 is answered by a notification from whichever worker ran it.
        t0 = time.monotonic()
        r = c2.post(T2V, json={"prompt": "sync across processes", "duration": 4,
                               "enable_sync_mode": True})
        assert r.json()["data"]["status"] == "completed"
        assert time.monotonic() - t0 < 30
        ready = httpx.get(f"{api1.base_url}/readyz").json()
        assert ready == {"status": "ok", "checks": {"database": "ok", "storage": "ok",
                                                    "queue": "ok"}}
        metrics = httpx.get(f"{api2.base_url}/metrics").text
        assert 'reelgate_queue_depth{backend="sandbox"}' in metrics
    # Neither worker fell over along the way.
    for w in workers:
        assert w.proc is not None and w.proc.poll() is None


def test_sync_waiters_on_both_apis(cluster) -> None:  # type: ignore[no-untyped-def]
    api1, api2 = cluster.api(), cluster.api()
    cluster.worker({"REELGATE_WORKER_CONCURRENCY": "4"})
    key = api1.create_key("sync")
    results: list[str] = []

    def call(api) -> None:  # type: ignore[no-untyped-def]
        with api.client(key) as c:
            r = c.post(T2V, json={"prompt": "both", "duration": 4, "enable_sync_mode": True})
            results.append(r.json()["data"]["status"])

    threads = [threading.Thread(target=call, args=(a,)) for a in (api1, api2, api1, api2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert results == ["completed"] * 4


def test_worker_stop_hands_work_back(cluster) -> None:  # type: ignore[no-untyped-def]
    env = {"REELGATE_SANDBOX_LATENCY_S": "4", "REELGATE_LEASE_TTL_S": "120"}
    api = cluster.api()
    first = cluster.worker(env)
    key = api.create_key("handback")
    with api.client(key) as c:
        pid = c.post(T2V, json={"prompt": "handed back", "duration": 4}).json()["data"]["id"]
        deadline = time.monotonic() + 20
        while c.get(f"/api/v3/predictions/{pid}").json()["data"]["status"] != "processing":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        first.stop()  # SIGTERM: graceful, releases the lease
        second = cluster.worker(env)
        t0 = time.monotonic()
        try:
            assert wait_until_done(c, pid, timeout=60)["status"] == "completed"
        except AssertionError:
            # Say what the workers saw, so a failure here can be understood from CI's log.
            for w in (first, second):
                print(f"--- {w.log_path}:\n{w.log_path.read_text()[-3000:]}")
            raise
        # Far sooner than the 120 s lease: it was handed back, not left to expire.
        assert time.monotonic() - t0 < 40


async def test_queue_prefix_keeps_deployments_apart(redis_url: str) -> None:
    import redis.asyncio as aioredis

    from reelgate.jobs.dispatch import RedisQueue, queue_name

    a = RedisQueue(redis_url, ["sandbox"], prefix="deploy-a")
    b = RedisQueue(redis_url, ["sandbox"], prefix="deploy-b")
    await a.start()
    await b.start()
    try:
        await a.dispatch("p1", "sandbox")
        await a.dispatch("p2", "sandbox")
        async with aioredis.Redis.from_url(redis_url) as r:
            assert await r.xlen(queue_name("sandbox", "deploy-a")) == 2
            assert await r.xlen(queue_name("sandbox", "deploy-b")) == 0
        assert (await a.depth())["sandbox"] == 2 and (await b.depth())["sandbox"] == 0
    finally:
        await a.close()
        await b.close()
