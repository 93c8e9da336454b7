"""GET /v1/models and /v1/models/{id}: the served model id and its aliases."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends

from voxport.api.auth import require_api_key
from voxport.api.deps import SettingsDep
from voxport.errors import VoxportError
from voxport.protocol import Model, ModelList

router = APIRouter(dependencies=[Depends(require_api_key)], tags=["models"])
_STARTED = int(time.time())


@router.get("/v1/models")
async def list_models(settings: SettingsDep) -> ModelList:
    return ModelList(data=[Model(id=m, created=_STARTED) for m in settings.model_ids])


@router.get("/v1/models/{model_id}")
async def retrieve_model(model_id: str, settings: SettingsDep) -> Model:
    if model_id not in settings.model_ids:
        raise VoxportError("not_found", f"The model '{model_id}' does not exist.", param="model",
                           code="model_not_found")  # fmt: skip
    return Model(id=model_id, created=_STARTED)
