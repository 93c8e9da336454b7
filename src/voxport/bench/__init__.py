"""`voxport bench`: a concurrency sweep against an OpenAI-compatible speech server and the raw engine.

Comparing the server's figures with the raw engine's at the same concurrency shows what HTTP, queueing,
encoding and the cache add or save. The parts: `plan` (which prompt and seed each request gets),
`targets` (server over HTTP, engine in-process), `sweep` (levels, measurements, summaries), `report`
(JSON, Markdown, PNG) and `cli` (arguments and a run). Only the `bench` subcommand imports this package.
"""

from voxport.bench.cli import add_parser, build_parser, main, run
from voxport.bench.plan import PROMPTS, LoadPlan, RequestSpec
from voxport.bench.report import RTF_DEFINITION, markdown_report, markdown_table, write_plot
from voxport.bench.sweep import LevelStats, run_level, summarise, sweep
from voxport.bench.targets import EngineTarget, RequestResult, ServerTarget

__all__ = [
    "PROMPTS", "RTF_DEFINITION", "EngineTarget", "LevelStats", "LoadPlan", "RequestResult", "RequestSpec",
    "ServerTarget", "add_parser", "build_parser", "main", "markdown_report", "markdown_table", "run",
    "run_level", "summarise", "sweep", "write_plot",
]  # fmt: skip
