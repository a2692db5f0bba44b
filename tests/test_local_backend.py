"""The local backend end to end over HTTP, on CPU: each family's real diffusers pipeline
with tiny random weights built here (configs in code, no download), served by a real
`reelgate serve` process through reelgate's own loading code."""

from __future__ import annotations

import os
import signal
import textwrap
import time
from pathlib import Path

import av
import httpx
import numpy as np
import pytest

from tests import launcher
from tests.conftest import ServerProcess, make_image

try:
    import diffusers  # noqa: F401
    import torch
except ImportError as exc:  # the `local` extra; CI installs it, so there it must be present
    if os.environ.get("REELGATE_REQUIRE_SERVICES"):
        raise
    pytest.skip(f"the local extra is not installed ({exc})", allow_module_level=True)

ADMIN = "local-admin-token"
FPS = 2
WAN = (64, 32)  # width, height at 720p 16:9
LTX = (64, 32)

# Injects torch.OutOfMemoryError into the next transformer forward after the test creates
# the trigger file: the fault a too-large request causes on a real GPU.
SITECUSTOMIZE = textwrap.dedent('''
    import os
    _trigger = os.environ.get("REELGATE_TEST_OOM_TRIGGER")
    if _trigger:
        import torch
        from diffusers import WanTransformer3DModel

        _forward = WanTransformer3DModel.forward

        def forward(self, *args, **kwargs):
            if os.path.exists(_trigger):
                os.remove(_trigger)
                raise torch.OutOfMemoryError(
                    "CUDA out of memory. Tried to allocate 40.00 GiB (injected by the test)")
            return _forward(self, *args, **kwargs)

        WanTransformer3DModel.forward = forward
''')


def models_toml(weights: dict[str, dict[str, Path]]) -> str:
    wan, ltx, ltx2 = weights["wan"], weights["ltx"], weights["ltx2"]
    by_scene = ", ".join(f'"{scene}" = "{wan[scene]}"'
                         for scene in ("image-to-video", "reference-to-video"))
    return textwrap.dedent(f"""
        [[models]]
        name = "wan-tiny"
        family = "wan"
        weights = "{wan['text-to-video']}"
        weights_by_scene = {{ {by_scene} }}
        dtype = "float32"
        fps = {FPS}
        sizes = {{ "720p" = [{WAN[0]}, {WAN[1]}] }}
        steps = 2
        guidance = 5.0
        price_per_second = 0.01

        [[models]]
        name = "wan-slow"
        family = "wan"
        weights = "{wan['text-to-video']}"
        dtype = "float32"
        fps = {FPS}
        sizes = {{ "720p" = [{WAN[0]}, {WAN[1]}] }}
        steps = 400
        price_per_second = 0.01

        [[models]]
        name = "wan-resume"
        family = "wan"
        weights = "{wan['text-to-video']}"
        dtype = "float32"
        fps = {FPS}
        sizes = {{ "720p" = [{WAN[0]}, {WAN[1]}] }}
        steps = 120

        [[models]]
        name = "wan-mid"
        family = "wan"
        weights = "{wan['text-to-video']}"
        dtype = "float32"
        fps = {FPS}
        sizes = {{ "720p" = [{WAN[0]}, {WAN[1]}] }}
        steps = 40
        cache = "first_block"
        cache_threshold = 0.05

        [[models]]
        name = "ltx-tiny"
        family = "ltx"
        weights = "{ltx['text-to-video']}"
        dtype = "float32"
        fps = {FPS}
        sizes = {{ "720p" = [{LTX[0]}, {LTX[1]}] }}
        steps = 2
        guidance = 3.0
        price_per_second = 0.01

        [[models]]
        name = "ltx2-tiny"
        family = "ltx2"
        weights = "{ltx2['text-to-video']}"
        dtype = "float32"
        fps = {FPS}
        sizes = {{ "720p" = [{LTX[0]}, {LTX[1]}] }}
        steps = 2
        guidance = 3.0
        max_sequence_length = 16
        price_per_second = 0.01
    """)


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    from reelgate.backends.local.tiny import build_ltx, build_ltx2, build_wan

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("weights")
    return {"wan": build_wan(root), "ltx": build_ltx(root), "ltx2": build_ltx2(root)}


def local_server(tmp: Path, weights: dict[str, dict[str, Path]],
                 data_dir: Path | None = None, **env: str) -> ServerProcess:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "models.toml").write_text(models_toml(weights))
    site = tmp / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return ServerProcess(data_dir or tmp / "data", {
        "REELGATE_LOCAL_MODELS_FILE": str(tmp / "models.toml"),
        "REELGATE_LOCAL_DEVICE": "cpu",
        "REELGATE_LOCAL_TORCH_THREADS": "1",
        "REELGATE_ADMIN_TOKEN": ADMIN,
        "REELGATE_TEST_OOM_TRIGGER": str(tmp / "oom-next"),
        "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
        **env,
    }, start_timeout=120).start()


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, weights):  # type: ignore[no-untyped-def]
    s = local_server(tmp_path_factory.mktemp("local"), weights)
    yield s
    s.stop()


def funded(srv: ServerProcess, name: str, credit: str = "5.00") -> tuple[str, httpx.Client]:
    with httpx.Client(base_url=srv.base_url, headers={"Authorization": f"Bearer {ADMIN}"},
                      timeout=60) as a:
        account_id = a.post("/admin/v1/accounts", json={"name": name}).json()["id"]
        assert a.post(f"/admin/v1/accounts/{account_id}/credits",
                      json={"amount": credit}).status_code == 200
        key = a.post(f"/admin/v1/accounts/{account_id}/keys", json={"name": name}).json()["key"]
    return account_id, srv.client(key)


def balance(c: httpx.Client) -> int:
    return int(c.get("/api/v3/balance").json()["data"]["balance_micros"])


def wait_end(c: httpx.Client, pid: str, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = c.get(f"/api/v3/predictions/{pid}/result").json()["data"]
        if data["status"] in ("completed", "failed", "cancelled"):
            return data
        time.sleep(0.2)
    raise AssertionError(f"{pid} did not end")


def create(c: httpx.Client, path: str, body: dict) -> str:
    r = c.post(path, json=body)
    assert r.status_code == 200, r.text
    return str(r.json()["data"]["id"])


def video_of(c: httpx.Client, data: dict, tmp: Path) -> tuple[Path, list[np.ndarray]]:
    assert data["status"] == "completed", data
    r = c.get(data["outputs"][0])
    assert r.status_code == 200
    path = tmp / f"{data['id']}.mp4"
    path.write_bytes(r.content)
    with av.open(str(path)) as f:
        frames = [fr.to_ndarray(format="rgb24") for fr in f.decode(video=0)]
    return path, frames


def check_shape(path: Path, frames: list[np.ndarray], size: tuple[int, int], duration: int,
                audio: bool) -> None:
    from reelgate.media.video import probe_video

    info = probe_video(path)
    assert len(frames) == info.frames == duration * FPS
    assert (info.width, info.height) == size
    assert frames[0].shape == (size[1], size[0], 3)
    assert info.duration_s == pytest.approx(duration, abs=0.01)
    assert (info.audio_codec is not None) == audio
    if audio:
        assert info.audio_duration_s == pytest.approx(duration, abs=0.05)


def png(color: tuple[int, int, int]) -> str:
    import base64

    return "data:image/png;base64," + base64.b64encode(make_image(color, (96, 48))).decode()


SCENES = [
    # (model, scene, body extras, duration, aspect)
    ("wan-tiny", "text-to-video", {}, 4, "16:9"),
    ("wan-tiny", "text-to-video", {"aspect_ratio": "9:16"}, 4, "9:16"),
    ("wan-tiny", "image-to-video", {"image": png((200, 30, 30))}, 4, "16:9"),
    ("wan-tiny", "image-to-video",
     {"image": png((200, 30, 30)), "last_image": png((30, 30, 200)), "duration": 8}, 8, "16:9"),
    ("wan-tiny", "reference-to-video",
     {"images": [png((30, 200, 30)), png((200, 200, 30))], "duration": 8}, 8, "16:9"),
    ("ltx-tiny", "text-to-video", {"duration": 6}, 6, "16:9"),
    ("ltx-tiny", "image-to-video", {"image": png((30, 30, 200))}, 4, "16:9"),
    ("ltx2-tiny", "text-to-video", {}, 4, "16:9"),
    ("ltx2-tiny", "image-to-video",
     {"image": png((30, 200, 200)), "aspect_ratio": "9:16"}, 6, "9:16"),
    ("ltx2-tiny", "text-to-video", {"generate_audio": False}, 4, "16:9"),
]


def test_every_scene_of_every_family(srv: ServerProcess, tmp_path: Path) -> None:
    _, c = funded(srv, "scenes")
    start = balance(c)
    ids = []
    for model, scene, extra, duration, _ in SCENES:
        body = {"prompt": "a red car on the city night", "seed": 7, **extra}
        body.setdefault("duration", duration)
        ids.append(create(c, f"/api/v3/local/{model}/{scene}", body))
    spent = 0
    for pid, (model, scene, extra, duration, aspect) in zip(ids, SCENES, strict=True):
        data = wait_end(c, pid)
        assert data["model"] == f"local/{model}/{scene}"
        path, frames = video_of(c, data, tmp_path)
        size = WAN if model.startswith("wan") else LTX
        # LTX-2 makes sound, muxed into the MP4, unless the request says generate_audio=false.
        audio = model.startswith("ltx2") and extra.get("generate_audio", True)
        check_shape(path, frames, size if aspect == "16:9" else size[::-1], duration,
                    audio=audio)
        assert data["progress"] == {"step": 2, "steps": 2, "percent": 100.0}
        spent += 10_000 * duration
    # Each completed video is charged at the model's price (0.01 per second).
    assert start - balance(c) == spent


def test_seed_reproduces_the_same_video(srv: ServerProcess, tmp_path: Path) -> None:
    _, c = funded(srv, "seeds")
    body = {"prompt": "a dog runs in the rain", "seed": 1234}
    runs = []
    for seed in (1234, 1234, 99):
        pid = create(c, "/api/v3/local/wan-tiny/text-to-video", {**body, "seed": seed})
        runs.append(video_of(c, wait_end(c, pid), tmp_path)[1])
    assert all(np.array_equal(a, b) for a, b in zip(runs[0], runs[1], strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(runs[0], runs[2], strict=True))


def test_progress_rises_and_cancel_stops_between_steps(srv: ServerProcess) -> None:
    _, c = funded(srv, "cancel")
    start = balance(c)
    pid = create(c, "/api/v3/local/wan-slow/text-to-video", {"prompt": "a slow river"})
    seen: list[int] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(set(seen)) < 3:
        data = c.get(f"/api/v3/predictions/{pid}/result").json()["data"]
        if "progress" in data:
            assert data["progress"]["steps"] == 400
            seen.append(data["progress"]["step"])
        time.sleep(0.05)
    assert len(set(seen)) >= 3, seen
    assert seen == sorted(seen) and seen[-1] > seen[0]
    r = c.post(f"/api/v3/predictions/{pid}/cancel")
    assert r.status_code == 200, r.text
    data = wait_end(c, pid, timeout=60)
    assert data["status"] == "cancelled"
    assert "while it was running" in data["error"]
    assert seen[-1] <= data["progress"]["step"] < 400
    assert data["outputs"] == []
    assert balance(c) == start  # the hold was released: nothing charged


def test_out_of_memory_fails_one_and_the_worker_goes_on(srv: ServerProcess,
                                                        tmp_path: Path) -> None:
    _, c = funded(srv, "oom")
    start = balance(c)
    Path(srv.env["REELGATE_TEST_OOM_TRIGGER"]).touch()
    pid = create(c, "/api/v3/local/wan-tiny/text-to-video", {"prompt": "a big sky"})
    data = wait_end(c, pid)
    assert data["status"] == "failed"
    assert "ran out of memory" in data["error"] and "not charged" in data["error"]
    assert balance(c) == start
    # The same worker process serves the next one.
    pid = create(c, "/api/v3/local/wan-tiny/text-to-video", {"prompt": "a big sky"})
    video_of(c, wait_end(c, pid), tmp_path)
    assert start - balance(c) == 80_000  # 8 s (the default) at 0.01 per second
    assert "out of memory" in (srv.log_path.read_text())


def test_killed_worker_prediction_is_picked_up_again(tmp_path: Path, weights,  # type: ignore[no-untyped-def]
                                                     ) -> None:
    first = local_server(tmp_path / "a", weights, REELGATE_LEASE_TTL_S="3",
                         REELGATE_TEST_SERVER_LOG="info")
    try:
        _, c = funded(first, "killed")
        pid = create(c, "/api/v3/local/wan-resume/text-to-video", {"prompt": "a tree"})
        deadline = time.monotonic() + 120
        while "progress" not in c.get(f"/api/v3/predictions/{pid}/result").json()["data"]:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        key = c.headers["Authorization"]
    finally:
        first.stop(signal.SIGKILL)
    second = local_server(tmp_path / "b", weights, data_dir=first.data_dir,
                          REELGATE_LEASE_TTL_S="3")
    try:
        with httpx.Client(base_url=second.base_url, headers={"Authorization": key},
                          timeout=60) as c2:
            data = wait_end(c2, pid, timeout=300)
            assert data["status"] == "completed", data
            assert data["progress"]["steps"] == 120
            _, frames = video_of(c2, data, tmp_path)
            assert len(frames) == 8 * FPS  # the default duration
    finally:
        second.stop()


def test_cli_shows_denoising_progress(srv: ServerProcess, tmp_path: Path) -> None:
    """`reelgate generate --model local/<name>` fills its progress with the steps (one
    line per change when stderr is not a terminal). This model also runs with diffusers'
    First Block Cache hook enabled."""
    import re
    import sys

    _, c = funded(srv, "cli")
    key = c.headers["Authorization"].removeprefix("Bearer ")
    env = {k: v for k, v in os.environ.items() if not k.startswith("REELGATE_")}
    env |= {"REELGATE_BASE_URL": srv.base_url, "REELGATE_API_KEY": key,
            "XDG_CONFIG_HOME": str(tmp_path / ".no-config")}
    out = launcher.run(
        [sys.executable, "-m", "reelgate.cli", "generate", "a small car", "--model",
         "local/wan-mid", "-d", "4", "-o", str(tmp_path / "car.mp4"), "--poll-interval",
         "0.05"], env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    steps = [int(m) for m in re.findall(r"step (\d+)/40", out.stderr)]
    assert len(steps) >= 2 and steps == sorted(steps) and steps[-1] == 40, out.stderr
    check_shape(tmp_path / "car.mp4", video_of_file(tmp_path / "car.mp4"), WAN, 4,
                audio=False)


def video_of_file(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as f:
        return [fr.to_ndarray(format="rgb24") for fr in f.decode(video=0)]


def test_local_check_loads_each_model_and_says_what_is_missing(weights,  # type: ignore[no-untyped-def]
                                                                tmp_path: Path) -> None:
    import subprocess
    import sys

    toml = models_toml(weights) + textwrap.dedent(f"""
        [[models]]
        name = "not-downloaded"
        family = "wan"
        weights = "Wan-AI/Wan2.2-TI2V-5B-Diffusers"
        sizes = {{ "720p" = [1280, 704] }}

        [[models]]
        name = "wrong-dir"
        family = "ltx"
        weights = "{tmp_path / 'nothing-here'}"
        sizes = {{ "720p" = [768, 512] }}
    """)
    (tmp_path / "models.toml").write_text(toml)
    env = {**os.environ, "REELGATE_LOCAL_MODELS_FILE": str(tmp_path / "models.toml"),
           "REELGATE_DATA_DIR": str(tmp_path / "data"), "COLUMNS": "250",
           "HF_HOME": str(tmp_path / "hf")}
    out = subprocess.run([sys.executable, "-m", "reelgate.cli", "local", "check", "--device",
                          "cpu"], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stdout + out.stderr
    lines = out.stdout.splitlines()

    def row(model: str, scene: str) -> str:
        return next(x for x in lines if f"local/{model} " in x and scene in x)

    for scene in ("text-to-video", "image-to-video", "reference-to-video"):
        assert " ok " in row("wan-tiny", scene)
    assert "ok" in row("ltx2-tiny", "image-to-video")
    assert "missing" in row("not-downloaded", "text-to-video")
    assert "missing" in row("wrong-dir", "image-to-video")
    # Nothing was fetched from the network.
    assert not list((tmp_path / "hf").rglob("*.safetensors"))


def test_gpu_worker_process_on_the_redis_queue(cluster, weights,  # type: ignore[no-untyped-def]
                                               tmp_path: Path) -> None:
    """`reelgate worker --backend local --device cpu` (cuda:N on a GPU machine) takes the
    local backend's queue; the API process never loads torch."""
    (tmp_path / "models.toml").write_text(models_toml(weights))
    extra = {"REELGATE_LOCAL_MODELS_FILE": str(tmp_path / "models.toml"),
             "REELGATE_LOCAL_TORCH_THREADS": "1", "REELGATE_ADMIN_TOKEN": ADMIN}
    api = cluster.api(extra)
    worker = cluster.worker(extra, args=("--backend", "local", "--device", "cpu"))
    _, c = funded(api, "gpu")
    pid = create(c, "/api/v3/local/ltx2-tiny/text-to-video", {"prompt": "rain on the sea"})
    data = wait_end(c, pid, timeout=300)
    path, frames = video_of(c, data, tmp_path)
    check_shape(path, frames, LTX, 8, audio=True)
    log = worker.log_path.read_text()
    assert "worker started: backends local" in log
    assert "loaded LTX2Pipeline" in log  # preloaded at start, kept warm


def test_wavespeed_sdk_runs_a_local_model(srv: ServerProcess, tmp_path: Path) -> None:
    """The official WaveSpeed SDK, unchanged, reads a local model as
    local/<name>/<scene>."""
    import wavespeed

    _, c = funded(srv, "sdk")
    key = c.headers["Authorization"].removeprefix("Bearer ")
    client = wavespeed.Client(api_key=key, base_url=srv.base_url, max_retries=0)
    out = client.run("local/ltx2-tiny/text-to-video", {"prompt": "waves", "duration": 4},
                     poll_interval=0.2, timeout=300)
    path = tmp_path / "sdk.mp4"
    path.write_bytes(httpx.get(out["outputs"][0], timeout=60).content)
    check_shape(path, video_of_file(path), LTX, 4, audio=True)
