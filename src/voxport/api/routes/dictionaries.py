"""Pronunciation dictionaries (admin): create or replace, list, retrieve, delete (voxport/dictionaries.py)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from voxport.api.auth import require_admin
from voxport.api.body import json_body
from voxport.api.deps import VoicesDep
from voxport.api.openapi import BODY_ERRORS, errors, json_request
from voxport.protocol import (
    PronunciationDictionary,
    PronunciationDictionaryDeleted,
    PronunciationDictionaryList,
    PronunciationDictionaryParams,
)

admin = APIRouter(dependencies=[Depends(require_admin)], responses=errors(401, 403),
                  tags=["pronunciation dictionaries", "admin"])  # fmt: skip
_PATH = "/v1/audio/pronunciation_dictionaries"
ParamsDep = Annotated[PronunciationDictionaryParams, Depends(json_body(PronunciationDictionaryParams))]


@admin.get(_PATH)
async def list_pronunciation_dictionaries(voices: VoicesDep) -> PronunciationDictionaryList:
    found = await voices.dictionaries.list()
    return PronunciationDictionaryList(data=[PronunciationDictionary(**d.public()) for d in found])


@admin.put(f"{_PATH}/{{name}}", openapi_extra=json_request(PronunciationDictionaryParams),
           responses=errors(*BODY_ERRORS))  # fmt: skip
async def put_pronunciation_dictionary(
    name: str, params: ParamsDep, voices: VoicesDep
) -> PronunciationDictionary:
    """Create or replace: JSON `entries` (word → respelling) or a W3C PLS document in `pls`."""
    return PronunciationDictionary(**(await voices.dictionaries.put(name, params)).public())


@admin.get(f"{_PATH}/{{name}}", responses=errors(404))
async def get_pronunciation_dictionary(name: str, voices: VoicesDep) -> PronunciationDictionary:
    return PronunciationDictionary(**(await voices.dictionaries.get(name)).public())


@admin.delete(f"{_PATH}/{{name}}", responses=errors(404))
async def delete_pronunciation_dictionary(name: str, voices: VoicesDep) -> PronunciationDictionaryDeleted:
    await voices.dictionaries.delete(name)
    return PronunciationDictionaryDeleted(name=name)
