"""One router per feature; a handler makes one service call and shapes the response."""

from fastapi import APIRouter

from voxport.api.routes import aliases, dictionaries, jobs, live, models, ops, playground, speech, voices

ROUTERS: tuple[APIRouter, ...] = (
    speech.router,
    live.router,
    jobs.router,
    voices.router,
    voices.admin,
    aliases.router,
    dictionaries.admin,
    models.router,
    ops.router,
    ops.admin,
    playground.router,
)
