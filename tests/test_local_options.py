"""The runtime options a local model may declare (CPU offload, torch.compile, diffusers'
cache hooks), on CPU: each is applied by reelgate's own loading code (the pipeline's
transformer carries the hook, the offload hooks or the compiled module) and a generation
through the local backend still makes an MP4 that decodes, with the frames asked for."""

from __future__ import annotations

import asyncio
import os
import shutil
import textwrap
from pathlib import Path
from typing import Any

import pytest

try:
    import diffusers  # noqa: F401
    import torch
except ImportError as exc:  # the `local` extra; CI installs it, so there it must be present
    if os.environ.get("REELGATE_REQUIRE_SERVICES"):
        raise
    pytest.skip(f"the local extra is not installed ({exc})", allow_module_level=True)

FPS = 2
STEPS = 3
# What a sequential offload does on a CPU worker, and why it is not run here.
SEQUENTIAL_ON_CPU = (
    "accelerate's sequential offload cannot run with the execution device on the CPU: after "
    "each module's forward it moves the weights to the meta device and fails there "
    "(TypeError in accelerate.utils.set_module_tensor_to_device, accelerate 1.15 / torch "
    "2.14); it exists for GPUs too small for the model, and on a CPU worker there is no "
    "other memory to offload to")

OPTIONS: dict[str, str] = {
    "offload-model": 'cpu_offload = "model"',
    "offload-sequential": 'cpu_offload = "sequential"',
    "compile": "compile = true",
    "first-block-cache": 'cache = "first_block"\ncache_threshold = 0.2',
    # Ratios for the tiny model (real ones come from a calibration run); fewer than the
    # steps, so diffusers interpolates them as it does for a checkpoint's published list.
    "mag-cache": 'cache = "mag"\ncache_threshold = 0.2\nmag_ratios = [1.0, 0.98, 0.95]',
    "taylorseer-cache": 'cache = "taylorseer"',
}


@pytest.fixture(scope="module")
def wan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from reelgate.backends.local.tiny import build_wan

    torch.set_num_threads(1)
    return build_wan(tmp_path_factory.mktemp("weights"))["text-to-video"]


def _backend(tmp: Path, weights: Path, option: str) -> Any:
    from reelgate.backends.local.backend import LocalBackend
    from reelgate.backends.local.config import LocalSettings

    (tmp / "models.toml").write_text(textwrap.dedent(f"""
        [[models]]
        name = "opt"
        family = "wan"
        weights = "{weights}"
        dtype = "float32"
        fps = {FPS}
        sizes = {{ "720p" = [64, 32] }}
        steps = {STEPS}
    """) + OPTIONS[option] + "\n")
    return LocalBackend(LocalSettings(models_file=tmp / "models.toml", device="cpu",
                                      torch_threads=1))


def _hooks(module: Any) -> set[str]:
    """Names of the diffusers hooks registered anywhere inside ``module``."""
    return {name for sub in module.modules() if hasattr(sub, "_diffusers_hook")
            for name in sub._diffusers_hook.hooks}


@pytest.mark.parametrize("option", list(OPTIONS))
def test_declared_option_is_applied_and_the_video_decodes(option: str, wan: Path,
                                                          tmp_path: Path) -> None:
    if option == "offload-sequential":
        pytest.skip(SEQUENTIAL_ON_CPU)
    if option == "compile" and not shutil.which(os.environ.get("CC", "gcc")):
        pytest.skip("torch.compile on CPU (inductor) compiles C++ and needs a C compiler")
    from reelgate import catalog
    from reelgate.backends.base import Job
    from reelgate.media.video import check_video

    backend = _backend(tmp_path, wan, option)
    try:
        m = backend.models["local/opt"]
        pipe = backend.cache.get(m, "text-to-video")  # reelgate's own loading code
        t = pipe.transformer
        if option == "offload-model":
            # accelerate's hooks move each model to the execution device for its forward
            # and back after; on a CPU worker both are the CPU, so the moves are no-ops.
            assert type(t._hf_hook).__name__ == "CpuOffload"
            assert type(pipe.text_encoder._hf_hook).__name__ == "CpuOffload"
        elif option == "compile":
            assert t._compiled_call_impl is not None  # nn.Module.compile(), in place
        else:
            expected = {"first-block-cache": ("FirstBlockCacheConfig", "fbc_leader_block_hook"),
                        "mag-cache": ("MagCacheConfig", "mag_cache_leader_block_hook"),
                        "taylorseer-cache": ("TaylorSeerCacheConfig", "taylorseer_cache")}
            config, hook = expected[option]
            assert type(t._cache_config).__name__ == config
            assert hook in _hooks(t)
        job = Job(id=f"opt-{option}", model="local/opt", scene="text-to-video",
                  prompt="a red car on the city night", duration=4, seed=5,
                  generate_audio=False)
        (tmp_path / "work").mkdir()
        video = asyncio.run(backend.generate(job, tmp_path / "work"))
        info = check_video(video)  # the runner's decode check
        assert info.frames == 4 * FPS and (info.width, info.height) == (64, 32)
    finally:
        catalog.LOCAL_MODELS.clear()
        catalog.LOCAL_ALIASES.clear()


def test_mag_cache_without_ratios_is_a_clear_config_error(tmp_path: Path) -> None:
    from reelgate.backends.local.config import LocalConfigError, load_local_models

    (tmp_path / "m.toml").write_text('[[models]]\nname = "x"\nfamily = "wan"\n'
                                     'weights = "w"\nsizes = { "720p" = [64, 32] }\n'
                                     'cache = "mag"\n')
    with pytest.raises(LocalConfigError, match="needs mag_ratios"):
        load_local_models(tmp_path / "m.toml")


def test_models_sharing_weights_keep_their_own_options(wan: Path, tmp_path: Path) -> None:
    """Two models declared on the same weights, one with a cache hook: the hook stays on
    its own model's pipeline, whichever loads first."""
    from reelgate import catalog
    from reelgate.backends.local.backend import LocalBackend
    from reelgate.backends.local.config import LocalSettings

    base = textwrap.dedent(f"""
        family = "wan"
        weights = "{wan}"
        dtype = "float32"
        fps = {FPS}
        sizes = {{ "720p" = [64, 32] }}
        steps = {STEPS}
    """)
    (tmp_path / "models.toml").write_text(
        f'[[models]]\nname = "cached"\ncache = "first_block"\n{base}\n'
        f'[[models]]\nname = "plain"\n{base}\n')
    backend = LocalBackend(LocalSettings(models_file=tmp_path / "models.toml", device="cpu"))
    try:
        cached = backend.cache.get(backend.models["local/cached"], "text-to-video")
        plain = backend.cache.get(backend.models["local/plain"], "text-to-video")
        assert cached.transformer.is_cache_enabled
        assert not plain.transformer.is_cache_enabled
        assert "fbc_leader_block_hook" not in _hooks(plain.transformer)
    finally:
        catalog.LOCAL_MODELS.clear()
        catalog.LOCAL_ALIASES.clear()
