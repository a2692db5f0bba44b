"""Inputs go through the storage (issue 10, defect 8): two API processes and a worker, each
with a data dir of its own, share only the database, Redis and the storage (one directory
named by REELGATE_STORAGE_URL, or an S3 bucket). An image fetched by one API process and a
file uploaded to one and used through the other both reach the worker. (The adapters'
own bytes round trip is in tests/contract/test_storage.py.)"""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest

from tests.conftest import ImageServer, ServerProcess, WorkerProcess, make_image, wait_until_done
from tests.fake_s3 import ACCESS_KEY, REGION, SECRET_KEY


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_separate_data_dirs_share_only_the_storage(kind: str, tmp_path: Path, pg_url: str,
                                                   redis_url: str, images: ImageServer,
                                                   request: pytest.FixtureRequest) -> None:
    env = {
        "REELGATE_DATABASE_URL": pg_url,
        "REELGATE_QUEUE_URL": redis_url,
        "REELGATE_QUEUE_PREFIX": f"inputs-{uuid.uuid4().hex[:8]}",
        "REELGATE_URL_SIGNING_KEY": "shared-signing-key-for-every-process",
        "REELGATE_SANDBOX_MAX_HEIGHT": "90",
    }
    if kind == "local":
        env["REELGATE_STORAGE_URL"] = str(tmp_path / "shared-storage")
    else:
        env.update({
            "REELGATE_STORAGE_URL": f"s3://{request.getfixturevalue('bucket')}/deploy",
            "REELGATE_S3_ENDPOINT_URL": request.getfixturevalue("s3_endpoint"),
            "REELGATE_S3_REGION": REGION,
            "REELGATE_S3_ACCESS_KEY_ID": ACCESS_KEY,
            "REELGATE_S3_SECRET_ACCESS_KEY": SECRET_KEY,
        })
    a = ServerProcess(tmp_path / "api-a", env).start()
    b = ServerProcess(tmp_path / "api-b", env).start()
    worker_dir = tmp_path / "worker"
    worker = WorkerProcess(worker_dir, ServerProcess(worker_dir, env).env).start()
    try:
        key = a.create_key("tester")
        red = images.add(f"/inputs-{uuid.uuid4().hex}.png", make_image((200, 30, 30)))
        with a.client(key) as ca, b.client(key) as cb:
            # An image fetched by API process a.
            r = ca.post("/api/v3/google/veo3.1-fast/image-to-video",
                        json={"prompt": "fetched", "image": red, "duration": 4})
            assert r.status_code == 200, r.text
            fetched = wait_until_done(ca, r.json()["data"]["id"], 120)
            assert fetched["status"] == "completed", fetched

            # An upload PUT to a, used in a create sent to b, read by the worker.
            png = make_image((20, 200, 60), size=(640, 360))
            ticket = ca.post("/api/v3/media/uploads", json={
                "filename": "frame.png", "size": len(png), "content_type": "image/png"})
            assert ticket.status_code == 200, ticket.text
            up = ticket.json()["data"]
            put = httpx.put(up["upload"]["url"], content=png, headers=up["upload"]["headers"])
            assert put.status_code == 200, put.text
            link = up["download_url"]
            via_b = link.replace(a.base_url, b.base_url)
            assert httpx.get(via_b).content == png  # b serves a's upload
            r = cb.post("/api/v3/google/veo3.1-fast/image-to-video",
                        json={"prompt": "uploaded", "image": link, "duration": 4})
            assert r.status_code == 200, r.text
            uploaded = wait_until_done(cb, r.json()["data"]["id"], 120)
            assert uploaded["status"] == "completed", uploaded
            assert httpx.get(uploaded["outputs"][0]).status_code == 200
        # Nothing went through a data dir: no process could read another's anyway.
        for d in (a.data_dir, b.data_dir, worker_dir):
            assert not [p for p in (d / "inputs").rglob("*") if p.is_file()], d
            assert not (d / "uploads").exists() or not any((d / "uploads").iterdir()), d
    finally:
        for proc in (worker, a, b):
            proc.stop()
