"""A directory put on `sys.path` when voxport serves `flash_attn` itself (see `sdpa_attention`).

It holds one package, `flash_attn`, that re-exports the SDPA drop-in. Being importable by name (not
only present in `sys.modules`) is what lets nano-vllm's spawned worker process find it: a spawned
interpreter starts empty, but inherits the parent's `sys.path`.
"""
