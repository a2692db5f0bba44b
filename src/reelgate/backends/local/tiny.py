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


def _wan_transformer(in_channels: int = 16, layers: int = 2) -> Any:
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
        in_channels=in_channels, out_channels=16, text_dim=32, freq_dim=256, ffn_dim=32,
        num_layers=layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32)


def build_wan(root: Path, seed: int = 0, layers: int = 2) -> dict[str, Path]:
    """Wan 2.1/2.2: text-to-video (WanPipeline), first / first+last frame
    (WanImageToVideoPipeline, the 36-channel image-conditioned transformer) and
    reference-to-video (WanVACEPipeline). Returns the weights directory of each scene."""
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
                transformer=_wan_transformer(16, layers)).save_pretrained(dirs["t2v"])
    WanImageToVideoPipeline(tokenizer=tok, text_encoder=te, vae=vae, scheduler=sched,
                            image_processor=None, image_encoder=None,
                            transformer=_wan_transformer(36, layers)
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


def build_ltx(root: Path, seed: int = 0, layers: int = 1) -> dict[str, Path]:
    """LTX-Video: one set of weights for LTXPipeline and LTXImageToVideoPipeline."""
    from diffusers import (
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXPipeline,
        LTXVideoTransformer3DModel,
    )

    _seed(seed)
    transformer = LTXVideoTransformer3DModel(
        in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=4,
        attention_head_dim=8, cross_attention_dim=32, num_layers=layers, caption_channels=32)
    vae = AutoencoderKLLTXVideo(
        in_channels=3, out_channels=3, latent_channels=8, block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8), layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, False, False),
        decoder_spatio_temporal_scaling=(True, True, False, False),
        decoder_inject_noise=(False, False, False, False, False),
        upsample_residual=(False, False, False, False), upsample_factor=(1, 1, 1, 1),
        timestep_conditioning=False, patch_size=1, patch_size_t=1, encoder_causal=True,
        decoder_causal=False)
    vae.use_framewise_encoding = False
    vae.use_framewise_decoding = False
    out = root / "ltx"
    LTXPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae,
                text_encoder=_t5_encoder(umt5=False), tokenizer=tokenizer(),
                transformer=transformer).save_pretrained(out)
    return {"text-to-video": out, "image-to-video": out}
