"""`flash_attn`, served by voxport's SDPA drop-in (voxport.engine.sdpa_attention).

Importable only while voxport has put its parent directory on `sys.path`, which it does when the real
flash-attn cannot be imported or `--attention sdpa` asks for the drop-in.
"""

from voxport.engine.sdpa_attention import (
    DROPIN_VERSION,
    flash_attn_func,
    flash_attn_varlen_func,
    flash_attn_with_kvcache,
)

__version__ = DROPIN_VERSION

__voxport_sdpa_dropin__ = True
__all__ = ["flash_attn_func", "flash_attn_varlen_func", "flash_attn_with_kvcache"]
