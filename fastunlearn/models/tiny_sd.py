"""Tiny Stable Diffusion pipelines built offline (random weights), as diffusers' own tests build them.

For tests, benchmarks and the documentation's examples on machines with no network: a CLIP text encoder and a
character-level CLIP tokenizer written from scratch (every printable ASCII character is a token, no merges), a
``UNet2DConditionModel`` with cross-attention, a two-level ``AutoencoderKL`` and a DDIM scheduler, saved as a
``StableDiffusionPipeline`` directory that the stock class loads. ``prediction_type="v_prediction"`` gives the
SD 2.x flavour. Nothing here is a trained model: generations are noise-like, but every code path (latents, VAE,
CLIP encoding, cross-attention, CFG, saving and loading) is Stable Diffusion's.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map of the 256 bytes to printable unicode characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _write_char_tokenizer(directory: Path) -> Path:
    """A CLIP tokenizer whose vocabulary is the byte-level characters (each alone and word-final) + specials."""
    directory.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for c in chars:
        vocab.setdefault(c, len(vocab))
    for c in chars:
        vocab.setdefault(c + "</w>", len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    return directory


def build_tiny_sd(prediction_type: str = "epsilon", seed: int = 0, max_length: int = 32,
                  sample_size: int = 8, cross_attention_dim: int = 32) -> Any:
    """A ``StableDiffusionPipeline`` of tiny random components (CLIP text encoder, UNet2DConditionModel,
    AutoencoderKL 16×16×3 ↔ 8×8×4 by default, DDIMScheduler with SD's scaled-linear betas)."""
    import tempfile

    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        tok_dir = _write_char_tokenizer(Path(tmp) / "tokenizer")
        tokenizer = CLIPTokenizer(vocab=str(tok_dir / "vocab.json"), merges=str(tok_dir / "merges.txt"),
                                  model_max_length=max_length)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=cross_attention_dim, intermediate_size=2 * cross_attention_dim,
        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=max_length,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )).eval()
    unet = UNet2DConditionModel(
        sample_size=sample_size, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim, attention_head_dim=4, norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
        latent_channels=4, norm_num_groups=8, sample_size=sample_size * 2,
    )
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                              beta_end=0.012, clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                              prediction_type=prediction_type)
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def save_tiny_sd(directory: str | Path, **kwargs: Any) -> Path:
    """:func:`build_tiny_sd` saved as a pipeline directory (safetensors); returns the directory."""
    directory = Path(directory)
    build_tiny_sd(**kwargs).save_pretrained(directory, safe_serialization=True)
    return directory


__all__ = ["build_tiny_sd", "save_tiny_sd"]
