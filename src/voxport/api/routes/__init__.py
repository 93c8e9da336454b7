"""One router per feature; a handler makes one service call and shapes the response."""

from fastapi import APIRouter

from voxport.api.routes import dictionaries, jobs, models, ops, playground, speech, voices

ROUTERS: tuple[APIRouter, ...] = (
    speech.router,
    jobs.router,
    voices.router,
    voices.admin,
    dictionaries.admin,
    models.router,
    ops.router,
    ops.admin,
    playground.router,
)
