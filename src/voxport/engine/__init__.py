"""Engine selection: the single place that knows which runtimes exist."""

from __future__ import annotations

import importlib.util
import logging

from voxport.config import Settings
from voxport.engine.base import Engine, EngineError

log = logging.getLogger("voxport.engine")


def _cuda_usable() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # a broken torch install reads as "no CUDA" here; loading will say more
        return False


def nanovllm_usable() -> tuple[bool, str]:
    """Whether the nano-vllm engine could run here, and why not if it cannot."""
    if not _cuda_usable():
        return False, "CUDA is not available"
    if importlib.util.find_spec("nanovllm_voxcpm") is None:
        return False, "the nano-vllm-voxcpm package is not installed (GPU extra)"
    return True, ""


def create_engine(settings: Settings, model_dir: str) -> Engine:
    """Pick and construct the engine the settings ask for; `start()` loads it."""
    choice = settings.engine
    if choice == "sim":
        from voxport.engine.sim import SimEngine

        return SimEngine(
            max_num_seqs=settings.max_num_seqs,
            max_model_len=settings.max_model_len,
            step_ms=settings.sim_step_ms,
            step_ms_per_seq=settings.sim_step_ms_per_seq,
        )
    if choice in ("auto", "nanovllm"):
        usable, why = nanovllm_usable()
        if usable:
            from voxport.engine.nanovllm import NanoVllmEngine

            log.info("engine %s: using nano-vllm (CUDA and nano-vllm-voxcpm available)", choice)
            return NanoVllmEngine(
                model_dir,
                inference_timesteps=settings.inference_timesteps,
                max_num_seqs=settings.max_num_seqs,
                max_model_len=settings.max_model_len,
                gpu_memory_utilization=settings.gpu_memory_utilization,
                enforce_eager=settings.enforce_eager,
                attention=settings.attention,
            )
        if choice == "nanovllm":
            raise EngineError(f"--engine nanovllm cannot run here: {why}")
        log.info("engine auto: nano-vllm is not usable (%s); using the reference engine", why)
    from voxport.engine.reference import ReferenceEngine

    return ReferenceEngine(model_dir, device=settings.device, cpu_threads=settings.cpu_threads)
