"""nano-vllm-voxcpm's own code on CPU, fed what voxport supplies to it: checkpoints and attention.

The nano-vllm engine needs CUDA to run, but two things voxport gives it can be checked anywhere: the
random checkpoint written by `voxport dummy-model` and the SDPA `flash_attn` drop-in. These tests load the
checkpoint through the package's real config parser, weight loader, audio VAE and tokenizer, and run its
real VoxCPM2 model the way its model runner does (packed prefill, prefill over a cached prefix, paged
decode steps), checking each paged step against recomputing the whole sequence from scratch. The one piece
of the package that cannot run on a CPU, the Triton kernel that writes K/V into the paged cache, is
replaced by the same scatter in torch. They also check that voxport counts a request's prompt positions
exactly as the package's engine does, since that count decides when a request is refused with 400.
"""

from __future__ import annotations

import json
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.gates import require_module
from voxport.engine.base import VoicePrompt
from voxport.engine.nanovllm import prompt_positions
from voxport.engine.sdpa_attention import install_as_flash_attn

# Skipped only where they are not installed (failed under VOXPORT_REQUIRE_PACKAGES, as in CI); installed but
# broken, the import error fails the module.
require_module("triton", "nano-vllm-voxcpm imports triton: the dev extra installs it")
install_as_flash_attn()
nanovllm = require_module("nanovllm_voxcpm", "scripts/dev installs nano-vllm-voxcpm")

from nanovllm_voxcpm.layers import attention as nv_attention  # noqa: E402
from nanovllm_voxcpm.layers.attention import Attention  # noqa: E402
from nanovllm_voxcpm.layers.audio_vae_v2 import AudioVAEV2  # noqa: E402
from nanovllm_voxcpm.models.voxcpm2.config import VoxCPM2Config  # noqa: E402
from nanovllm_voxcpm.models.voxcpm2.engine import VoxCPM2Engine  # noqa: E402
from nanovllm_voxcpm.models.voxcpm2.model import VoxCPM2Model  # noqa: E402
from nanovllm_voxcpm.models.voxcpm2.utils import mask_multichar_chinese_tokens  # noqa: E402
from nanovllm_voxcpm.utils.context import reset_all_contexts, set_context  # noqa: E402
from nanovllm_voxcpm.utils.loader import load_model  # noqa: E402
from transformers import LlamaTokenizerFast  # noqa: E402

BLOCK_SIZE = 256  # the package's KV-cache block size
AUDIO_START, REF_START, REF_END = 101, 103, 104
TIMESTEPS = 10


def store_kvcache_torch(key, value, k_cache, v_cache, slot_mapping) -> None:
    """The package's Triton store_kvcache, in torch: token i's K/V go to flat slot slot_mapping[i]."""
    width = key.shape[1] * key.shape[2]
    keep = slot_mapping >= 0
    slots = slot_mapping[keep].long()
    k_cache.view(-1, width)[slots] = key.reshape(-1, width)[keep]
    v_cache.view(-1, width)[slots] = value.reshape(-1, width)[keep]


@pytest.fixture(scope="module")
def config(tiny_model: Path) -> VoxCPM2Config:
    return VoxCPM2Config.model_validate_json((tiny_model / "config.json").read_text())


@pytest.fixture(scope="module")
def model(tiny_model: Path, config: VoxCPM2Config) -> VoxCPM2Model:
    torch._dynamo.config.disable = True  # the package torch.compiles a few helpers; compiling is for GPUs
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)  # fp32, so that paged and recomputed results compare tightly
    try:
        model = VoxCPM2Model(config, TIMESTEPS).eval()
        load_model(model, str(tiny_model))  # raises on any parameter the checkpoint lacks
    finally:
        torch.set_default_dtype(default)
    yield model
    torch._dynamo.config.disable = False


@pytest.fixture(autouse=True)
def torch_kv_store(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nv_attention, "store_kvcache", store_kvcache_torch)


def test_config_weights_vae_and_tokenizer_load(tiny_model: Path, config: VoxCPM2Config, model) -> None:
    raw = json.loads((tiny_model / "config.json").read_text())
    assert raw["architecture"] == "voxcpm2"  # what VoxCPM.from_pretrained dispatches on
    assert config.lm_config.hidden_size == raw["lm_config"]["hidden_size"]

    from safetensors import safe_open

    with safe_open(str(tiny_model / "model.safetensors"), "pt", "cpu") as f:
        embed = f.get_tensor("base_lm.embed_tokens.weight")
        stop = f.get_tensor("stop_head.weight")
    assert torch.equal(model.base_lm.embed_tokens.weight, embed.float())
    assert torch.count_nonzero(model.stop_head.weight) == 0  # the never-stop head survives loading

    vae = AudioVAEV2(config=config.audio_vae_config)
    missing, unexpected = vae.load_state_dict(torch.load(tiny_model / "audiovae.pth")["state_dict"])
    assert (missing, unexpected) == ([], [])
    assert (vae.sample_rate, vae.out_sample_rate) == (16000, 48000)
    assert stop.shape == (2, raw["lm_config"]["hidden_size"])

    tokenizer = mask_multichar_chinese_tokens(LlamaTokenizerFast.from_pretrained(str(tiny_model)))
    ids = tokenizer("Hello, world. 你好世界")
    assert ids and all(isinstance(i, int) and 0 <= i < raw["lm_config"]["vocab_size"] for i in ids)
    assert not {AUDIO_START, REF_START, REF_END} & set(ids)


# --- running the model as the model runner does ------------------------------------------------------


@dataclass
class Seq:
    """One sequence's model inputs, position by position, and the KV-cache pages it owns."""

    tokens: list[int]
    feats: np.ndarray  # [len, patch, feat_dim]
    mask: list[bool]
    blocks: list[int]
    noise: torch.Tensor  # z_noise for this sequence's next step

    def __len__(self) -> int:
        return len(self.tokens)

    def append(self, latent: np.ndarray) -> None:
        """What the engine does after a step: the generated patch becomes the next input position."""
        self.tokens.append(0)
        self.feats = np.concatenate([self.feats, latent[None]], axis=0)
        self.mask.append(True)


def make_seq(rng: np.random.Generator, text: int, ref_patches: int, blocks: list[int], config) -> Seq:
    vocab = config.lm_config.vocab_size
    text_ids = [int(t) for t in rng.integers(128, vocab, text)] + [AUDIO_START]
    tokens, mask = text_ids, [False] * len(text_ids)
    if ref_patches:
        tokens = [REF_START] + [0] * ref_patches + [REF_END] + tokens
        mask = [False] + [True] * ref_patches + [False] + mask
    feats = np.zeros((len(tokens), config.patch_size, config.feat_dim), dtype=np.float32)
    audio = np.flatnonzero(mask)
    feats[audio] = rng.standard_normal((len(audio), config.patch_size, config.feat_dim)).astype(np.float32)
    noise = torch.from_numpy(rng.standard_normal((config.feat_dim, config.patch_size)).astype(np.float32))
    return Seq(tokens, feats, mask, blocks, noise)


def causal_attention(model) -> list[Attention]:
    return [m for m in model.modules() if isinstance(m, Attention) and m.is_causal]


def allocate_cache(model, num_blocks: int) -> None:
    for module in causal_attention(model):
        shape = (num_blocks, BLOCK_SIZE, module.num_kv_heads, module.head_dim)
        module.k_cache = torch.full(shape, float("nan"))  # unwritten slots poison any read
        module.v_cache = torch.full(shape, float("nan"))


def slots(seq: Seq, start: int, end: int) -> list[int]:
    return [seq.blocks[i // BLOCK_SIZE] * BLOCK_SIZE + i % BLOCK_SIZE for i in range(start, end)]


def block_tables(seqs: list[Seq]) -> torch.Tensor:
    width = max(len(s.blocks) for s in seqs)
    return torch.tensor([s.blocks + [-1] * (width - len(s.blocks)) for s in seqs], dtype=torch.int32)


def run(model, seqs: list[Seq], rows: list[slice], positions: list[int], text_only: bool = False) -> dict:
    """The model on the given rows of each sequence, packed as VoxCPM2Runner.run packs them."""
    parts = list(zip(seqs, rows, strict=True))
    inputs = {
        "positions": torch.tensor(positions, dtype=torch.int64),
        "text_tokens": torch.tensor(np.concatenate([np.array(s.tokens)[r] for s, r in parts])),
        "feat": torch.from_numpy(np.concatenate([s.feats[r] for s, r in parts])),
        "feat_mask": torch.tensor(np.concatenate([np.array(s.mask)[r] for s, r in parts])),
        "temperature": torch.ones(len(seqs)),
        "cfg_value": torch.full((len(seqs),), 2.0),
        "z_noise": torch.stack([s.noise for s in seqs]),
    }
    with torch.inference_mode():
        try:
            out = model(**inputs, text_only_prefill=text_only)
        finally:
            reset_all_contexts()
    return {"latents": out["latents"].float(), "stop_flag": out["stop_flag"]}


def prefill(model, seqs: list[Seq], cached: list[int], text_only: bool = False) -> dict:
    """A prefill step; the first `cached[i]` positions of sequence i are already in the paged cache."""
    cu_q, cu_k, slot_list, positions = [0], [0], [], []
    for seq, done in zip(seqs, cached, strict=True):
        cu_q.append(cu_q[-1] + len(seq) - done)
        cu_k.append(cu_k[-1] + len(seq))
        positions.extend(range(done, len(seq)))
        slot_list.extend(slots(seq, done, len(seq)))
    set_context(
        True,
        cu_seqlens_q=torch.tensor(cu_q, dtype=torch.int32),
        cu_seqlens_k=torch.tensor(cu_k, dtype=torch.int32),
        max_seqlen_q=max(b - a for a, b in zip(cu_q[:-1], cu_q[1:], strict=True)),
        max_seqlen_k=max(len(s) for s in seqs),
        slot_mapping=torch.tensor(slot_list, dtype=torch.int32),
        block_tables=block_tables(seqs) if any(cached) else None,  # as prepare_prefill_context decides
    )
    return run(model, seqs, [slice(done, None) for done in cached], positions, text_only)


def decode(model, seqs: list[Seq]) -> dict:
    """A decode step: one new position per sequence, attending over its pages."""
    set_context(
        False,
        slot_mapping=torch.tensor([slots(s, len(s) - 1, len(s))[0] for s in seqs], dtype=torch.int32),
        context_lens=torch.tensor([len(s) for s in seqs], dtype=torch.int32),
        block_tables=block_tables(seqs),
    )
    return run(model, seqs, [slice(-1, None)] * len(seqs), [len(s) - 1 for s in seqs])


def recompute(model, seqs: list[Seq]) -> dict:
    """Each sequence's last step from scratch, in a cache of its own that nothing else has touched."""
    saved = [(m.k_cache, m.v_cache) for m in causal_attention(model)]
    fresh = [Seq(s.tokens, s.feats, s.mask, [2 * i, 2 * i + 1], s.noise) for i, s in enumerate(seqs)]
    allocate_cache(model, num_blocks=2 * len(seqs))
    try:
        return prefill(model, fresh, [0] * len(fresh))
    finally:
        for module, (k, v) in zip(causal_attention(model), saved, strict=True):
            module.k_cache, module.v_cache = k, v


def assert_same_step(paged: dict, fresh: dict) -> None:
    assert torch.isfinite(paged["latents"]).all()
    torch.testing.assert_close(paged["latents"], fresh["latents"], atol=2e-4, rtol=2e-4)
    assert torch.equal(paged["stop_flag"], fresh["stop_flag"])


def next_step(seqs: list[Seq], step: dict, rng: np.random.Generator) -> None:
    for seq, latent in zip(seqs, step["latents"].numpy(), strict=True):
        seq.append(latent)
        seq.noise = torch.from_numpy(rng.standard_normal(tuple(seq.noise.shape)).astype(np.float32))


def test_paged_decode_matches_recomputing_the_sequence(model, config) -> None:
    rng = np.random.default_rng(0)
    # A text-only request in one page, and a reference-voice request over two pages that are neither
    # adjacent nor in order, as the block manager may hand them out.
    seqs = [make_seq(rng, 30, 0, [5], config), make_seq(rng, 40, 210, [6, 2], config)]
    assert len(seqs[1]) < BLOCK_SIZE < len(seqs[1]) + 8  # the decode steps cross into the second page

    allocate_cache(model, num_blocks=8)
    step = prefill(model, seqs, [0, 0])
    assert_same_step(step, recompute(model, seqs))
    for _ in range(8):
        next_step(seqs, step, rng)
        step = decode(model, seqs)
        assert_same_step(step, recompute(model, seqs))


def test_prefill_over_a_cached_prefix_matches_recomputing(model, config) -> None:
    rng = np.random.default_rng(1)
    # Two requests cloning the same reference voice share its first page (prefix caching); the
    # second one's prefill computes only what follows the shared page.
    first = make_seq(rng, 60, 240, [3, 1], config)
    allocate_cache(model, num_blocks=8)
    prefill(model, [first], [0])
    tail = make_seq(rng, 25, 0, [], config)
    second = Seq(
        first.tokens[:BLOCK_SIZE] + tail.tokens,
        np.concatenate([first.feats[:BLOCK_SIZE], tail.feats]),
        first.mask[:BLOCK_SIZE] + tail.mask,
        [3, 4],
        tail.noise,
    )
    third = make_seq(rng, 50, 0, [0], config)  # and an unrelated request in the same batch

    step = prefill(model, [second, third], [BLOCK_SIZE, 0])
    assert_same_step(step, recompute(model, [second, third]))


def test_text_only_prefill_shortcut_changes_nothing(model, config) -> None:
    rng = np.random.default_rng(2)
    seqs = [make_seq(rng, 20, 0, [0], config), make_seq(rng, 70, 0, [1], config)]
    allocate_cache(model, num_blocks=2)
    shortcut = prefill(model, seqs, [0, 0], text_only=True)
    allocate_cache(model, num_blocks=2)
    assert_same_step(shortcut, prefill(model, seqs, [0, 0]))


# --- prompt positions: voxport's count against the package's engine ----------------------------------


def engine_prompt_length(tokenizer, text: str, transcript: str, latents: np.ndarray | None, reference: bool):
    """The prompt length nano-vllm's VoxCPM2Engine.add_request computes, run on a stand-in `self`
    that holds just the attributes it reads; its `add_sequence` keeps the sequence it is given."""
    kept = []
    engine = types.SimpleNamespace(
        tokenizer=tokenizer,
        patch_size=4,
        feat_dim=64,
        n_decode_pad_frames=12,
        audio_start_token=AUDIO_START,
        ref_audio_start_token=REF_START,
        ref_audio_end_token=REF_END,
        block_size=BLOCK_SIZE,
        max_model_len=1 << 20,
        resolve_lora=lambda name: None,
        add_sequence=kept.append,
    )
    VoxCPM2Engine.add_request(
        engine,
        seq_id="probe",
        target_text=text,
        prompt_text=transcript,
        prompt_latents=None if reference else latents,
        ref_audio_latents=latents if reference else None,
        max_generate_length=1,
    )
    return len(kept[0])


@pytest.mark.parametrize(
    ("text", "transcript", "patches", "reference"),
    [
        ("Hello world.", "", 0, False),  # no voice
        ("Hello world.", "", 40, True),  # a recording without transcript: reference audio
        ("world.", "Hello", 40, False),  # with transcript: continuation (joined as 'Helloworld.')
        ("这是一个测试。", "你好世界，", 17, False),  # multi-character Chinese tokens are split
        ("Mixed 你好 text, 3 numbers.", "A transcript.", 120, False),
    ],
)
def test_prompt_positions_match_the_package(tiny_model: Path, text, transcript, patches, reference) -> None:
    tokenizer = mask_multichar_chinese_tokens(LlamaTokenizerFast.from_pretrained(str(tiny_model)))
    latents = np.zeros((patches * 4, 64), dtype=np.float32) if patches else None
    voice = None
    if patches:
        # What NanoVllmEngine.encode_voice records for each kind of voice.
        if reference:
            handle = {"ref_audio_latents": b""}
        else:
            handle = {"prompt_latents": b"", "transcript": transcript}
        mode = "reference" if reference else "continuation"
        positions = patches + 2 if reference else patches
        voice = VoicePrompt(key="k", mode=mode, positions=positions, handle=handle)
    ours = prompt_positions(lambda s: len(tokenizer(s)), text, len(tokenizer(text)), voice)
    assert ours == engine_prompt_length(tokenizer, text, transcript, latents, reference)
