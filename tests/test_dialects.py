"""The Google-native and OpenAI Videos dialects, driven by the official SDKs from PyPI,
unchanged, against a running ``reelgate serve`` (sandbox backend, billed): every door ends
in the same prediction rows, the same ledger and the same v3 list.

- google-genai 2.x (this environment) in Gemini API mode: generate_videos → poll with
  operations.get → files.download, text-to-video and image-to-video; errors raise
  ``google.genai.errors.ClientError`` with reelgate's message and Google's status names.
- google-genai 3.x in Vertex AI express mode, from a second virtualenv (``.venv-genai3``,
  made by ``.ci/run``): the same, in a subprocess (the server pins 2.x).
- openai: videos.create_and_poll, download_content (video and thumbnail), list (cursor
  pages), delete, multipart input_reference, errors as the SDK's exception types.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from reelgate.media.video import check_video
from tests.conftest import ServerProcess, make_image

# The openai SDK warns that OpenAI's own Sora service is being retired; the Videos API shape
# it speaks is what this dialect serves, so the warning is not about reelgate.
pytestmark = pytest.mark.filterwarnings("ignore:The Sora API:DeprecationWarning")

ROOT = Path(__file__).resolve().parents[1]
GENAI3_PYTHON = ROOT / ".venv-genai3" / "bin" / "python"


class Billed:
    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.key = server.create_key("dialects")
        out = server.admin("accounts", "credit", "dialects", "100")
        assert out.returncode == 0, out.stderr
        self.v3 = server.client(self.key)

    def balance(self) -> str:
        return str(self.v3.get("/api/v3/balance").json()["data"]["balance"])

    def v3_item(self, prediction_id: str) -> dict:
        items = self.v3.get("/api/v3/predictions", params={"page_size": 100}).json()
        found = [i for i in items["data"]["items"] if i["id"] == prediction_id]
        assert found, f"{prediction_id} is not in the v3 list"
        return found[0]


@pytest.fixture(scope="module")
def billed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Billed]:
    server = ServerProcess(tmp_path_factory.mktemp("dialects"), {
        # Billed like a paid backend, so each door's cost shows in the ledger.
        "REELGATE_FREE_BACKENDS": "",
        "REELGATE_SANDBOX_MAX_HEIGHT": "144",
        "REELGATE_SANDBOX_FPS": "8",
        "REELGATE_WORKER_CONCURRENCY": "3",
        "REELGATE_POLICY_BLOCKLIST": "forbidden thing",
    }).start()
    b = Billed(server)
    yield b
    b.v3.close()
    server.stop()


def png_bytes() -> bytes:
    return make_image((200, 40, 40), size=(640, 360))


# --- Google, Gemini API shape (google-genai 2.x) ---------------------------------------------


def genai_client(billed: Billed, key: str | None = None):  # type: ignore[no-untyped-def]
    from google import genai
    from google.genai import types

    return genai.Client(api_key=key or billed.key,
                        http_options=types.HttpOptions(base_url=billed.server.base_url))


def test_google_sdk_gemini_text_and_image_to_video(billed: Billed, tmp_path: Path) -> None:
    import time

    from google.genai import types

    client = genai_client(billed)
    before = billed.balance()
    ops = {
        "t2v": client.models.generate_videos(
            model="veo-3.1-fast-generate-preview",
            source=types.GenerateVideosSource(prompt="a paper boat on a pond"),
            config=types.GenerateVideosConfig(aspect_ratio="16:9", duration_seconds=4,
                                              negative_prompt="rain")),
        "i2v": client.models.generate_videos(
            model="veo-3.1-generate-preview",
            source=types.GenerateVideosSource(
                prompt="the square starts to spin",
                image=types.Image(image_bytes=png_bytes(), mime_type="image/png")),
            config=types.GenerateVideosConfig(aspect_ratio="9:16", duration_seconds=6)),
    }
    for label, op in ops.items():
        assert op.name.startswith("models/veo-3.1"), op.name
        deadline = time.monotonic() + 120
        while not op.done:
            assert time.monotonic() < deadline, f"{label} did not finish"
            time.sleep(0.3)
            op = client.operations.get(op)
        assert op.error is None, op.error
        video = op.response.generated_videos[0].video
        out = tmp_path / f"{label}.mp4"
        client.files.download(file=video, destination=str(out))
        info = check_video(out)
        assert info.duration_s == pytest.approx(4 if label == "t2v" else 6, abs=0.3)
        # Portrait for the 9:16 request, landscape for the 16:9 one.
        assert (info.height > info.width) == (label == "i2v")
        # One prediction, whatever the door: in the v3 list, marked google, with its cost.
        item = billed.v3_item(op.name.rsplit("/", 1)[1])
        assert item["dialect"] == "google"
        assert item["status"] == "completed"
        assert item["model"] == ("google/veo3.1-fast/text-to-video" if label == "t2v"
                                 else "google/veo3.1/image-to-video")
        assert float(item["cost"]) > 0
    assert float(billed.balance()) < float(before)


def test_google_sdk_errors_carry_reelgate_message(billed: Billed) -> None:
    from google.genai import errors, types

    client = genai_client(billed)
    with pytest.raises(errors.ClientError) as bad:
        client.models.generate_videos(model="veo-3.1-generate-preview", prompt="x",
                                      config=types.GenerateVideosConfig(duration_seconds=5))
    assert bad.value.code == 400 and bad.value.status == "INVALID_ARGUMENT"
    assert "parameters.durationSeconds: must be one of 4, 6, 8" in bad.value.message

    with pytest.raises(errors.ClientError) as unknown:
        client.models.generate_videos(model="veo-9-ultra", prompt="x")
    assert unknown.value.code == 404 and unknown.value.status == "NOT_FOUND"
    assert "veo-3.1-generate-preview" in unknown.value.message  # names what exists

    stranger = genai_client(billed, key="rg_wrong")  # kept: a dropped client closes itself
    with pytest.raises(errors.ClientError) as denied:
        stranger.models.generate_videos(model="veo-3.1-generate-preview", prompt="x")
    assert denied.value.code == 401 and denied.value.status == "UNAUTHENTICATED"

    with pytest.raises(errors.ClientError) as blocked:
        client.models.generate_videos(model="veo-3.1-generate-preview",
                                      prompt="a forbidden thing")
    assert blocked.value.code == 400 and "content policy" in blocked.value.message.lower()

    # Raw REST: the key as ?key=, Google's error body for a bad body.
    r = httpx.post(f"{billed.server.base_url}/v1beta/models/veo-3.1-generate-preview:"
                   f"predictLongRunning?key={billed.key}", json={"instances": []})
    assert r.status_code == 400
    assert r.json() == {"error": {"code": 400, "status": "INVALID_ARGUMENT", "message":
                                  "instances: must be a list of exactly one instance"}}


def test_google_content_block_reads_as_rai_filter(billed: Billed) -> None:
    import time

    client = genai_client(billed)
    before = billed.balance()
    op = client.models.generate_videos(model="veo-3.1-fast-generate-preview",
                                       prompt="something [sandbox:nsfw]")
    deadline = time.monotonic() + 60
    while not op.done:
        assert time.monotonic() < deadline
        time.sleep(0.3)
        op = client.operations.get(op)
    assert op.error is None
    assert op.response.rai_media_filtered_count == 1
    assert op.response.rai_media_filtered_reasons
    assert not op.response.generated_videos
    assert billed.balance() == before  # refunded


def test_google_rest_fields_map_to_the_v3_request(billed: Billed) -> None:
    """Raw REST, every instance field: referenceImages make reference-to-video, image +
    lastFrame first-and-last-frame; parameters keep their meaning."""
    import base64

    img = {"bytesBase64Encoded": base64.b64encode(png_bytes()).decode(),
           "mimeType": "image/png"}
    url = f"{billed.server.base_url}/v1beta/models/veo-3.1-generate-001:predictLongRunning"
    headers = {"x-goog-api-key": billed.key}
    refs = httpx.post(url, headers=headers, json={
        "instances": [{"prompt": "the same teapot, new scene", "referenceImages": [
            {"image": img, "referenceType": "asset"}, {"image": img, "referenceType": "asset"}]}],
        "parameters": {"aspectRatio": "9:16", "resolution": "1080p", "durationSeconds": 8,
                       "personGeneration": "allow_adult", "sampleCount": 1}})
    frames = httpx.post(url, headers=headers, json={
        "instances": [{"prompt": "from this to that", "image": img, "lastFrame": img}],
        "parameters": {"durationSeconds": 6}})
    assert refs.status_code == 200, refs.text
    assert frames.status_code == 400
    assert frames.json()["error"]["message"] == (
        "parameters.durationSeconds: must be 8 when instances[0].lastFrame is given (got 6)")
    item = billed.v3_item(refs.json()["name"].rsplit("/", 1)[1])
    assert item["model"] == "google/veo3.1/reference-to-video" and item["dialect"] == "google"
    unknown = httpx.post(url, headers=headers, json={
        "instances": [{"prompt": "x"}], "parameters": {"storageUri": "gs://b/p"}})
    assert unknown.status_code == 400
    assert unknown.json()["error"]["message"] == (
        "parameters.storageUri: isn't supported by this model")
    style = httpx.post(url, headers=headers, json={"instances": [{"prompt": "x",
        "referenceImages": [{"image": img, "referenceType": "style"}]}]})
    assert style.status_code == 400 and "only asset references" in style.text


# --- Google, Vertex AI express shape (google-genai 3.x, second virtualenv) -------------------

GENAI3_SCRIPT = r"""
import json, sys, time
from google import genai
from google.genai import errors, types

base, key, image_path, out_dir = sys.argv[1:5]
client = genai.Client(vertexai=True, api_key=key, http_options=types.HttpOptions(base_url=base))
result = {"version": genai.__version__, "videos": {}}
image = types.Image(image_bytes=open(image_path, "rb").read(), mime_type="image/png")
for label, kwargs in {"t2v": {}, "i2v": {"image": image}}.items():
    op = client.models.generate_videos(model="veo-3.1-fast-generate-001",
                                       prompt="a kite over a field", **kwargs,
                                       config=types.GenerateVideosConfig(duration_seconds=4))
    deadline = time.monotonic() + 120
    while not op.done:
        assert time.monotonic() < deadline
        time.sleep(0.3)
        op = client.operations.get(op)
    video = op.response.generated_videos[0].video
    path = f"{out_dir}/{label}.mp4"
    video.save(path)
    result["videos"][label] = {"name": op.name, "path": path}
try:
    client.models.generate_videos(model="veo-3.1-generate-001", prompt="x",
                                  config=types.GenerateVideosConfig(aspect_ratio="4:3"))
except errors.ClientError as exc:
    result["error"] = {"type": type(exc).__name__, "code": exc.code, "status": exc.status,
                       "message": exc.message}
print(json.dumps(result))
"""


def test_google_sdk_3x_vertex_express(billed: Billed, tmp_path: Path) -> None:
    if not GENAI3_PYTHON.exists():
        if os.environ.get("REELGATE_REQUIRE_SERVICES") == "1":
            pytest.fail(f"{GENAI3_PYTHON} is missing (.ci/run makes it)")
        pytest.skip("google-genai 3.x virtualenv (.venv-genai3) not present")
    image = tmp_path / "in.png"
    image.write_bytes(png_bytes())
    script = tmp_path / "genai3.py"
    script.write_text(GENAI3_SCRIPT)
    proc = subprocess.run([str(GENAI3_PYTHON), str(script), billed.server.base_url, billed.key,
                           str(image), str(tmp_path)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["version"].startswith("3."), result["version"]
    for label, video in result["videos"].items():
        assert video["name"].startswith("publishers/google/models/veo-3.1-fast-generate-001/")
        info = check_video(Path(video["path"]))
        assert info.duration_s == pytest.approx(4, abs=0.3)
        item = billed.v3_item(video["name"].rsplit("/", 1)[1])
        assert item["dialect"] == "google" and item["status"] == "completed"
        assert item["model"].endswith("image-to-video" if label == "i2v" else "text-to-video")
    assert result["error"]["type"] == "ClientError"
    assert result["error"]["code"] == 400 and result["error"]["status"] == "INVALID_ARGUMENT"
    assert "parameters.aspectRatio: must be one of 16:9, 9:16" in result["error"]["message"]


# --- OpenAI Videos ---------------------------------------------------------------------------


def openai_client(billed: Billed, key: str | None = None):  # type: ignore[no-untyped-def]
    import openai

    return openai.OpenAI(api_key=key or billed.key, base_url=f"{billed.server.base_url}/v1",
                         max_retries=0)


def test_openai_sdk_create_poll_download_list_delete(billed: Billed, tmp_path: Path) -> None:
    client = openai_client(billed)
    video = client.videos.create_and_poll(model="veo-3.1-fast-generate-preview",
                                          prompt="a lighthouse at dusk", seconds="4",
                                          size="1280x720", poll_interval_ms=300)
    assert video.status == "completed", video.error
    assert video.progress == 100 and video.seconds == "4" and video.size == "1280x720"
    assert video.completed_at is not None and video.completed_at >= video.created_at
    content = client.videos.download_content(video.id)
    out = tmp_path / "t2v.mp4"
    content.write_to_file(out)
    info = check_video(out)
    assert info.duration_s == pytest.approx(4, abs=0.3) and info.width > info.height
    thumb = client.videos.download_content(video.id, variant="thumbnail")
    with Image.open(io.BytesIO(thumb.content)) as img:
        assert img.format == "WEBP" and img.width > img.height

    # Multipart with an uploaded input_reference: image-to-video, portrait by default.
    ref = tmp_path / "ref.png"
    ref.write_bytes(png_bytes())
    with open(ref, "rb") as f:
        i2v = client.videos.create_and_poll(prompt="the square rolls away",
                                            input_reference=f, poll_interval_ms=300)
    assert i2v.status == "completed", i2v.error
    assert i2v.size == "720x1280" and i2v.seconds == "4"  # OpenAI's defaults
    assert i2v.model == "veo3.1-fast"
    item = billed.v3_item(i2v.id)
    assert item["dialect"] == "openai" and item["model"] == "google/veo3.1-fast/image-to-video"
    assert float(item["cost"]) > 0
    assert billed.v3_item(video.id)["dialect"] == "openai"

    # Cursor pages: one video per page, newest first, until has_more is false.
    seen = [v.id for v in client.videos.list(limit=1)]
    assert seen.index(i2v.id) < seen.index(video.id)
    v3_ids = [i["id"] for i in billed.v3.get("/api/v3/predictions",
                                             params={"page_size": 100}).json()["data"]["items"]]
    assert seen == v3_ids  # every door's predictions, in the same order
    first_page = client.videos.list(limit=1)
    assert len(first_page.data) == 1 and first_page.has_more

    deleted = client.videos.delete(video.id)
    assert deleted.deleted and deleted.id == video.id and deleted.object == "video.deleted"
    import openai

    with pytest.raises(openai.NotFoundError) as gone:
        client.videos.download_content(video.id)
    assert "deleted" in gone.value.message


def test_openai_sdk_errors(billed: Billed) -> None:
    import openai

    client = openai_client(billed)
    with pytest.raises(openai.BadRequestError) as long:
        client.videos.create(prompt="x", seconds="12")
    assert "seconds: 12 is not a length veo3.1-fast can make" in long.value.message
    assert long.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as size:
        client.videos.create(prompt="x", size="1792x1024")
    assert "size: 1792x1024 is not a size" in size.value.message
    with pytest.raises(openai.BadRequestError) as hd:
        client.videos.create(prompt="x", size="1920x1080", seconds="4")
    assert "seconds: must be 8 for size 1920x1080 (got 4)" in hd.value.message
    full = client.videos.create(prompt="x", size="1920x1080")  # default length: 8 here
    assert full.seconds == "8" and full.size == "1920x1080"
    with pytest.raises(openai.BadRequestError) as model:
        client.videos.create(prompt="x", model="sora-2")
    assert "'sora-2' is not offered" in model.value.message
    stranger = openai_client(billed, key="rg_wrong")
    with pytest.raises(openai.AuthenticationError):
        stranger.videos.list()
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve("0" * 32)
    with pytest.raises(openai.BadRequestError) as blocked:
        client.videos.create(prompt="a forbidden thing")
    assert blocked.value.code == "moderation_blocked"
    video = client.videos.create_and_poll(prompt="a red ball", poll_interval_ms=300)
    with pytest.raises(openai.BadRequestError) as remix:
        client.videos.remix(video.id, prompt="make it blue")
    assert "Remix is not offered" in remix.value.message
    failed = client.videos.create_and_poll(prompt="oops [sandbox:fail]", poll_interval_ms=300)
    assert failed.status == "failed" and failed.error is not None
    assert "simulated failure" in failed.error.message
    assert billed.v3_item(failed.id)["cost"] == "0.000000"  # refunded


def test_openai_json_body_with_image_url(billed: Billed) -> None:
    import base64

    uri = "data:image/png;base64," + base64.b64encode(png_bytes()).decode()
    r = billed.v3.post("/v1/videos", json={"prompt": "a spinning top", "seconds": 6,
                                          "size": "720x1280",
                                          "input_reference": {"image_url": uri}})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "queued" and r.json()["seconds"] == "6"
    assert r.headers["openai-poll-after-ms"]
    assert billed.v3_item(r.json()["id"])["model"] == "google/veo3.1-fast/image-to-video"


# --- one prediction, whatever the door: limits, SDK and CLI ----------------------------------


def test_rate_limit_is_shared_by_every_door(billed: Billed) -> None:
    import openai
    from google.genai import errors

    server = billed.server
    key = server.create_key("limited")
    out = server.admin("accounts", "set-limits", "limited", "--rate-per-minute", "2")
    assert out.returncode == 0, out.stderr
    with server.client(key) as v3:
        assert v3.get("/api/v3/balance").status_code == 200  # 1st request of the minute
    client = openai_client(billed, key=key)
    assert client.videos.list().data == []  # 2nd
    gclient = genai_client(billed, key=key)
    with pytest.raises(errors.ClientError) as google_429:  # 3rd, through another door
        gclient.models.generate_videos(model="veo-3.1-generate-preview", prompt="x")
    assert google_429.value.code == 429 and google_429.value.status == "RESOURCE_EXHAUSTED"
    assert "2 requests per minute" in google_429.value.message
    with pytest.raises(openai.RateLimitError):
        client.videos.list()


def test_reelgate_sdk_cli_and_console_show_the_dialect(billed: Billed) -> None:
    from reelgate.client import Client
    from tests.test_cli_user import run_cli

    r = billed.v3.post("/v1/videos", data={"prompt": "seen from the CLI", "seconds": "4"})
    assert r.status_code == 200, r.text
    video_id = r.json()["id"]
    with Client(api_key=billed.key, base_url=billed.server.base_url) as sdk:
        pred = sdk.get(video_id)
    assert pred.dialect == "openai" and float(pred.cost) > 0
    out = run_cli("predictions", "get", video_id, url=billed.server.base_url, key=billed.key)
    assert out.returncode == 0, out.stderr
    assert "dialect:        openai" in out.stdout
    # And in the web console's page of the prediction.
    from tests.test_console import signed_in

    console = signed_in(billed.server, billed.key)
    try:
        page = console.get(f"/console/p/{video_id}")
    finally:
        console.close()
    assert page.status_code == 200, page.text[:300]
    assert '<td id="dialect">openai</td>' in page.text


def test_dialects_scaled_out_on_postgresql_redis_and_s3(  # type: ignore[no-untyped-def]
        cluster, s3_endpoint: str, bucket: str, tmp_path: Path) -> None:
    """The same doors in the scaled-out mode: PostgreSQL rows, a ``reelgate worker`` process,
    videos in S3 (the Google download redirects to the presigned URL; Vertex's inline bytes
    and OpenAI's thumbnail are read back from the bucket)."""
    import base64

    from google import genai
    from google.genai import types

    from tests.fake_s3 import ACCESS_KEY, REGION, SECRET_KEY

    cluster.env.update({
        "REELGATE_STORAGE_URL": f"s3://{bucket}/videos",
        "REELGATE_S3_ENDPOINT_URL": s3_endpoint,
        "REELGATE_S3_REGION": REGION,
        "REELGATE_S3_ACCESS_KEY_ID": ACCESS_KEY,
        "REELGATE_S3_SECRET_ACCESS_KEY": SECRET_KEY,
        "REELGATE_SANDBOX_MAX_HEIGHT": "144",
        "REELGATE_SANDBOX_FPS": "8",
    })
    api = cluster.api()
    cluster.worker()
    key = api.create_key("scaled-dialects")
    client = genai.Client(api_key=key, http_options=types.HttpOptions(base_url=api.base_url))
    op = client.models.generate_videos(model="veo-3.1-fast-generate-preview",
                                       source=types.GenerateVideosSource(prompt="scaled"),
                                       config=types.GenerateVideosConfig(duration_seconds=4))
    import time

    deadline = time.monotonic() + 120
    while not op.done:
        assert time.monotonic() < deadline
        time.sleep(0.3)
        op = client.operations.get(op)
    out = tmp_path / "g.mp4"
    client.files.download(file=op.response.generated_videos[0].video, destination=str(out))
    assert check_video(out).duration_s == pytest.approx(4, abs=0.3)
    # Vertex AI shape, raw: the finished video inline, read back from the bucket.
    pid = op.name.rsplit("/", 1)[1]
    r = httpx.post(f"{api.base_url}/v1beta1/publishers/google/models/veo-3.1-fast-generate-001:"
                   "fetchPredictOperation", headers={"x-goog-api-key": key},
                   json={"operationName": f"publishers/google/models/x/operations/{pid}"})
    assert r.status_code == 200, r.text
    inline = base64.b64decode(r.json()["response"]["videos"][0]["bytesBase64Encoded"])
    assert inline == out.read_bytes()

    oai = openai_client_for(api.base_url, key)
    video = oai.videos.create_and_poll(prompt="scaled too", poll_interval_ms=300)
    assert video.status == "completed", video.error
    thumb = oai.videos.download_content(video.id, variant="thumbnail")
    with Image.open(io.BytesIO(thumb.content)) as img:
        assert img.format == "WEBP"
    assert [v.id for v in oai.videos.list(limit=1)] == [video.id, pid]  # PostgreSQL cursor
    with api.client(key) as v3:
        items = v3.get("/api/v3/predictions").json()["data"]["items"]
    assert {(i["id"], i["dialect"]) for i in items} == {(pid, "google"), (video.id, "openai")}


def openai_client_for(base_url: str, key: str):  # type: ignore[no-untyped-def]
    import openai

    return openai.OpenAI(api_key=key, base_url=f"{base_url}/v1", max_retries=0)
