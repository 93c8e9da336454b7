"""Random-weight VoxCPM2 checkpoints of the real architecture, built offline.

The checkpoint is written in the hub's file layout (config.json, model.safetensors, audiovae.pth as
`{"state_dict": ...}`, tokenizer files) and loads through the real `from_pretrained` code of both
engines. Its stop head is zeroed, so the model never asks to stop: every generation runs to its
length cap, which makes output length a function of the text and `max_length` alone.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Literal

Size = Literal["tiny", "full"]

# VoxCPM2 hard-codes these ids for audio start/end and reference-audio start/end.
AUDIO_TOKEN_IDS = {
    101: "<|audio_start|>",
    102: "<|audio_end|>",
    103: "<|ref_audio_start|>",
    104: "<|ref_audio_end|>",
}
_RESERVED_IDS = 128
_CHARS = (
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    " .,!?;:'\"-()[]/&%$#@*+=<>~_…—–’“”"
    "。，！？；：、（）你好世界这是一个测试语音合成我们的中文"
)
_MERGES = [("▁", "t"), ("h", "e"), ("▁t", "he"), ("▁", "a"), ("i", "n"), ("e", "r"), ("o", "n"), ("▁", "s")]


def _rope(head_dim: int, original_max: int) -> dict:
    # Random weights make the long-rope factors irrelevant to speed and shape; 1.0 keeps RoPE plain.
    return {
        "type": "longrope",
        "long_factor": [1.0] * (head_dim // 2),
        "short_factor": [1.0] * (head_dim // 2),
        "original_max_position_embeddings": original_max,
    }


def model_config(size: Size, vocab_size: int) -> dict:
    """config.json for a checkpoint. `full` has the published VoxCPM2 dimensions (~2.3 B params)."""
    cfm = {"sigma_min": 1e-06, "solver": "euler", "t_scheduler": "log-norm", "inference_cfg_rate": 2.0}
    vae_rates = {"encoder_rates": [2, 5, 8, 8], "decoder_rates": [8, 6, 5, 2, 2, 2]}
    vae_common = {
        **vae_rates,
        "latent_dim": 64,
        "depthwise": True,
        "sample_rate": 16000,
        "out_sample_rate": 48000,
        "sr_bin_boundaries": [20000, 30000, 40000],
    }
    if size == "full":
        head_dim = 128
        lm = {
            "hidden_size": 2048,
            "intermediate_size": 6144,
            "max_position_embeddings": 32768,
            "num_attention_heads": 16,
            "num_hidden_layers": 28,
            "num_key_value_heads": 2,
            "rope_scaling": _rope(head_dim, 32768),
            "vocab_size": 73448,
        }
        local = {
            "hidden_dim": 1024,
            "ffn_dim": 4096,
            "num_heads": 16,
            "num_layers": 12,
            "kv_channels": head_dim,
        }
        extra = {"scalar_quantization_latent_dim": 512, "residual_lm_num_layers": 8, "max_length": 8192}
        vae = {**vae_common, "encoder_dim": 128, "decoder_dim": 2048}
    elif size == "tiny":
        head_dim = 16
        lm = {
            "hidden_size": 64,
            "intermediate_size": 128,
            "max_position_embeddings": 4096,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "num_key_value_heads": 2,
            "rope_scaling": _rope(head_dim, 4096),
            "vocab_size": vocab_size,
        }
        local = {"hidden_dim": 64, "ffn_dim": 128, "num_heads": 4, "num_layers": 1, "kv_channels": head_dim}
        # A small window, so that tests can reach its limit with input of allowed length.
        extra = {"scalar_quantization_latent_dim": 32, "residual_lm_num_layers": 1, "max_length": 2048}
        vae = {**vae_common, "encoder_dim": 8, "decoder_dim": 128}
    else:
        raise ValueError(f"unknown size {size!r}")
    lm.update(
        bos_token_id=1,
        eos_token_id=2,
        rms_norm_eps=1e-05,
        rope_theta=10000,
        kv_channels=head_dim,
        use_mup=False,  # nano-vllm-voxcpm asserts it
        scale_emb=12,
        dim_model_base=256,
        scale_depth=1.4,
    )
    return {
        "architecture": "voxcpm2",
        "lm_config": lm,
        "patch_size": 4,
        "feat_dim": 64,
        "scalar_quantization_scale": 9,
        "residual_lm_no_rope": True,
        "encoder_config": dict(local),
        "dit_config": {**local, "cfm_config": cfm},
        "audio_vae_config": vae,
        "device": "cuda",  # as in the published config; both engines choose the device themselves
        "dtype": "bfloat16",
        **extra,
    }


def build_tokenizer(out_dir: Path):
    """A small Llama-style byte-fallback BPE tokenizer: ids 0..127 special, then bytes and characters.

    Like MiniCPM4's tokenizer it uses the metaspace '▁' and byte fallback, so any text tokenizes;
    ids 101..104 are the audio tokens VoxCPM2 expects.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers
    from transformers import LlamaTokenizerFast

    specials = ["<unk>", "<s>", "</s>"] + [f"<|reserved_{i}|>" for i in range(3, _RESERVED_IDS)]
    for token_id, token in AUDIO_TOKEN_IDS.items():
        specials[token_id] = token
    vocab = {token: i for i, token in enumerate(specials)}
    for byte in range(256):
        vocab[f"<0x{byte:02X}>"] = len(vocab)
    for char in "▁" + _CHARS.replace(" ", ""):
        vocab.setdefault(char, len(vocab))
    for left, right in _MERGES:
        vocab.setdefault(left + right, len(vocab))

    core = Tokenizer(
        models.BPE(vocab=vocab, merges=_MERGES, unk_token="<unk>", byte_fallback=True, fuse_unk=True)
    )
    core.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    core.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    core.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tokenizer = LlamaTokenizerFast(
        tokenizer_object=core,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        add_bos_token=True,
        add_eos_token=False,
        legacy=False,
    )
    tokenizer.save_pretrained(str(out_dir))
    return tokenizer


def build_checkpoint(out_dir: str | os.PathLike[str], size: Size = "tiny", seed: int = 0) -> dict:
    """Write a random-weight checkpoint to `out_dir`; returns a summary (sizes, parameter counts)."""
    from voxport.engine.compat import install_torchaudio_placeholder, quiet_third_party

    install_torchaudio_placeholder()
    import torch
    from safetensors.torch import save_file
    from voxcpm.model.voxcpm2 import VoxCPM2Model, VoxCPMConfig
    from voxcpm.modules.audiovae import AudioVAEConfigV2, AudioVAEV2

    started = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(out)
    config = model_config(size, vocab_size=len(tokenizer))
    (out / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")

    parsed = VoxCPMConfig.model_validate(config)
    with quiet_third_party(logging.getLogger("voxport.engine")), torch.device("cpu"):
        vae = AudioVAEV2(config=AudioVAEConfigV2.model_validate(config["audio_vae_config"]))
        model = VoxCPM2Model(parsed, tokenizer, vae, device="cpu")
    with torch.no_grad():
        # Equal stop logits: argmax picks "continue" at every step, so the model never stops.
        model.stop_head.weight.zero_()
        if getattr(model.stop_head, "bias", None) is not None:
            model.stop_head.bias.zero_()

    state = model.state_dict()
    prefix = "audio_vae."
    vae_state = {
        k[len(prefix) :]: v.detach().float().contiguous() for k, v in state.items() if k.startswith(prefix)
    }
    lm_state = {
        k: v.detach().to(torch.bfloat16).contiguous() for k, v in state.items() if not k.startswith(prefix)
    }
    save_file(lm_state, str(out / "model.safetensors"), metadata={"format": "pt"})
    torch.save({"state_dict": vae_state}, out / "audiovae.pth")
    return {
        "dir": str(out),
        "size": size,
        "seed": seed,
        "vocab": len(tokenizer),
        "lm_params": sum(v.numel() for v in lm_state.values()),
        "vae_params": sum(v.numel() for v in vae_state.values()),
        "seconds": round(time.perf_counter() - started, 2),
    }
