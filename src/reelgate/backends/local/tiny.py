"""Each family's real diffusers pipeline with tiny, randomly initialised components, saved
in diffusers format: for tests, the benchmark and `reelgate local check` on machines
without weights. Nothing is downloaded: configs are in code and the tokenizer is built with
``tokenizers``. The architectures are the real ones, only narrow and shallow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

WORDS = (
    "a cat dog red blue green sea sky city night day walks runs on the in of with and "
    "camera slow fast light dark over under big small car tree rain sun wind river"
).split()


def _seed(seed: int) -> None:
    import torch

    torch.manual_seed(seed)


def tokenizer() -> Any:
    """A word-level fast tokenizer (pad 0, eos 1, unk 2) that the pipelines load back
    through transformers like any T5 tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for w in WORDS:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>", model_max_length=512)


def _t5_encoder(umt5: bool, d_model: int = 32) -> Any:
    from transformers import T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    kw: dict[str, Any]  # mixed values: typed as Any, the configs take each by name
    kw = dict(vocab_size=64, d_model=d_model, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
              relative_attention_num_buckets=8, dropout_rate=0.0, pad_token_id=0,
              eos_token_id=1, decoder_start_token_id=0)
    if umt5:
        return UMT5EncoderModel(UMT5Config(**kw)).eval()
    return T5EncoderModel(T5Config(**kw)).eval()


def _wan_vae() -> Any:
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                            temperal_downsample=[False, True, True])


def _wan_transformer(in_channels: int = 16, layers: int = 2, heads: int = 2,
                     head_dim: int = 12, ffn_dim: int | None = None) -> Any:
    from diffusers import WanTransformer3DModel

    if ffn_dim is None:
        # The real models' feed-forward is ~5.8x (1.3B: 8960 for 1536) to ~2.7x (14B:
        # 13824 for 5120) the width.
        ffn_dim = 32 if heads * head_dim <= 24 else 3 * heads * head_dim
    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=head_dim,
        in_channels=in_channels, out_channels=16, text_dim=32, freq_dim=256, ffn_dim=ffn_dim,
        num_layers=layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        # The real models' value. The rotary table is sliced per axis, so it must cover the
        # most latent patches along a side (832x480 is 52 wide); its first rows are the same
        # whatever its length, so small frames give the same output as with a short table.
        rope_max_seq_len=1024)


def build_wan(root: Path, seed: int = 0, layers: int = 2, heads: int = 2,
              head_dim: int = 12, ffn_dim: int | None = None,
              text_only: bool = False) -> dict[str, Path]:
    """Wan 2.1/2.2: text-to-video (WanPipeline), first / first+last frame
    (WanImageToVideoPipeline, the 36-channel image-conditioned transformer) and
    reference-to-video (WanVACEPipeline). Returns the weights directory of each scene.
    ``layers``, ``heads``, ``head_dim`` and ``ffn_dim`` size the transformers (the benchmark
    grows them so that a step costs enough to be measured, up to the real sizes).
    ``text_only`` builds the text-to-video weights alone: at a real size a second
    transformer for image-to-video doubles the build and the disk it takes."""
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        WanImageToVideoPipeline,
        WanPipeline,
        WanVACEPipeline,
        WanVACETransformer3DModel,
    )

    _seed(seed)
    tok, te, vae = tokenizer(), _t5_encoder(umt5=True), _wan_vae()
    sched = FlowMatchEulerDiscreteScheduler(shift=5.0)
    dirs = {s: root / f"wan-{s}" for s in ("t2v", "i2v", "vace")}
    WanPipeline(tokenizer=tok, text_encoder=te, vae=vae, scheduler=sched,
                transformer=_wan_transformer(16, layers, heads, head_dim, ffn_dim)
                ).save_pretrained(dirs["t2v"])
    if text_only:
        return {"text-to-video": dirs["t2v"]}
    WanImageToVideoPipeline(tokenizer=tok, text_encoder=te, vae=vae, scheduler=sched,
                            image_processor=None, image_encoder=None,
                            transformer=_wan_transformer(36, layers, heads, head_dim, ffn_dim)
                            ).save_pretrained(dirs["i2v"])
    vace = WanVACETransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16,
        out_channels=16, text_dim=32, freq_dim=256, ffn_dim=32, num_layers=max(2, layers),
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
        vace_layers=[0], vace_in_channels=96)
    WanVACEPipeline(tokenizer=tok, text_encoder=te, vae=vae, scheduler=sched,
                    transformer=vace).save_pretrained(dirs["vace"])
    return {"text-to-video": dirs["t2v"], "image-to-video": dirs["i2v"],
            "reference-to-video": dirs["vace"]}


def build_ltx(root: Path, seed: int = 0, layers: int = 1, heads: int = 4,
              head_dim: int = 8, real_compression: bool = False) -> dict[str, Path]:
    """LTX-Video: one set of weights for LTXPipeline and LTXImageToVideoPipeline.

    The tiny VAE compresses 4x in space and time, so that the tests' small frames still
    give a few latent patches. ``real_compression`` makes it compress as the real one
    (32x in space: 4x4 patches and three halvings; 8x in time), so that a real frame size
    gives the transformer the real model's token count (768x512x121: 6144)."""
    from diffusers import (
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXPipeline,
        LTXVideoTransformer3DModel,
    )

    _seed(seed)
    transformer = LTXVideoTransformer3DModel(
        in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=heads,
        attention_head_dim=head_dim, cross_attention_dim=heads * head_dim, num_layers=layers,
        caption_channels=32)
    scaling = (True, True, real_compression, False)
    vae = AutoencoderKLLTXVideo(
        in_channels=3, out_channels=3, latent_channels=8, block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8), layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1),
        spatio_temporal_scaling=scaling, decoder_spatio_temporal_scaling=scaling,
        decoder_inject_noise=(False, False, False, False, False),
        upsample_residual=(False, False, False, False), upsample_factor=(1, 1, 1, 1),
        timestep_conditioning=False, patch_size=4 if real_compression else 1, patch_size_t=1,
        encoder_causal=True, decoder_causal=False)
    vae.use_framewise_encoding = False
    vae.use_framewise_decoding = False
    out = root / "ltx"
    LTXPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae,
                text_encoder=_t5_encoder(umt5=False), tokenizer=tokenizer(),
                transformer=transformer).save_pretrained(out)
    return {"text-to-video": out, "image-to-video": out}


def _gemma3(hidden: int = 32, layers: int = 2) -> Any:
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    config = Gemma3Config(
        text_config=dict(vocab_size=64, hidden_size=hidden, intermediate_size=37,
                         num_hidden_layers=layers, num_attention_heads=2,
                         num_key_value_heads=1, head_dim=16, max_position_embeddings=256,
                         sliding_window=64, pad_token_id=0, eos_token_id=1, bos_token_id=2),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                           num_attention_heads=2, image_size=28, patch_size=14),
        mm_tokens_per_image=4, boi_token_index=3, eoi_token_index=4, image_token_index=5)
    return Gemma3ForConditionalGeneration(config).eval()


def build_ltx2(root: Path, seed: int = 0, layers: int = 2, heads: int = 2,
               head_dim: int = 8) -> dict[str, Path]:
    """LTX-2 (video with audio): one set of weights for LTX2Pipeline and
    LTX2ImageToVideoPipeline — Gemma 3 text encoder, text connectors, video and audio VAEs,
    the audio-video transformer and the vocoder."""
    from diffusers import (
        AutoencoderKLLTX2Audio,
        AutoencoderKLLTX2Video,
        FlowMatchEulerDiscreteScheduler,
        LTX2Pipeline,
        LTX2VideoTransformer3DModel,
    )
    from diffusers.pipelines.ltx2 import LTX2TextConnectors
    from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder

    _seed(seed)
    text_encoder = _gemma3()
    hidden = text_encoder.config.text_config.hidden_size
    transformer = LTX2VideoTransformer3DModel(
        in_channels=4, out_channels=4, patch_size=1, patch_size_t=1, num_attention_heads=heads,
        attention_head_dim=head_dim, cross_attention_dim=heads * head_dim, audio_in_channels=4,
        audio_out_channels=4, audio_num_attention_heads=2, audio_attention_head_dim=4,
        audio_cross_attention_dim=8, num_layers=layers, qk_norm="rms_norm_across_heads",
        caption_channels=hidden, rope_double_precision=False, rope_type="split")
    connectors = LTX2TextConnectors(
        caption_channels=hidden,
        text_proj_in_factor=text_encoder.config.text_config.num_hidden_layers + 1,
        video_connector_num_attention_heads=4, video_connector_attention_head_dim=8,
        video_connector_num_layers=1, video_connector_num_learnable_registers=None,
        audio_connector_num_attention_heads=4, audio_connector_attention_head_dim=8,
        audio_connector_num_layers=1, audio_connector_num_learnable_registers=None,
        connector_rope_base_seq_len=32, rope_theta=10000.0, rope_double_precision=False,
        causal_temporal_positioning=False, rope_type="split")
    vae = AutoencoderKLLTX2Video(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8,),
        decoder_block_out_channels=(8,), layers_per_block=(1,),
        decoder_layers_per_block=(1, 1), spatio_temporal_scaling=(True,),
        decoder_spatio_temporal_scaling=(True,), decoder_inject_noise=(False, False),
        downsample_type=("spatial",), upsample_residual=(False,), upsample_factor=(1,),
        timestep_conditioning=False, patch_size=1, patch_size_t=1, encoder_causal=True,
        decoder_causal=False)
    vae.use_framewise_encoding = False
    vae.use_framewise_decoding = False
    audio_vae = AutoencoderKLLTX2Audio(
        base_channels=4, output_channels=2, ch_mult=(1,), num_res_blocks=1,
        attn_resolutions=None, in_channels=2, resolution=32, latent_channels=2,
        norm_type="pixel", causality_axis="height", dropout=0.0,
        mid_block_add_attention=False, sample_rate=16000, mel_hop_length=160,
        is_causal=True, mel_bins=8)
    vocoder = LTX2Vocoder(
        # Upsampling 8 x 4 x 5 = the mel hop (160): a full-length waveform, as the real one.
        in_channels=2 * 8, hidden_channels=32, out_channels=2,
        upsample_kernel_sizes=[16, 8, 10], upsample_factors=[8, 4, 5],
        resnet_kernel_sizes=[3], resnet_dilations=[[1, 3, 5]],
        leaky_relu_negative_slope=0.1, output_sampling_rate=16000)
    out = root / "ltx2"
    LTX2Pipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, audio_vae=audio_vae,
                 text_encoder=text_encoder, tokenizer=tokenizer(), connectors=connectors,
                 transformer=transformer, vocoder=vocoder).save_pretrained(out)
    return {"text-to-video": out, "image-to-video": out}
