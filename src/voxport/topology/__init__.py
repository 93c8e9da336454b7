"""The process topology of `voxport serve --workers N` (N >= 2):

    supervisor (voxport serve)      binds the listening socket once, starts and restarts the others
     ├─ engine host                 the engine, global admission, voice prompts; one message per engine
     │                              step to each worker, holding the new samples of all its streams
     └─ worker × N                  uvicorn on the shared socket, the whole HTTP app, over a RemoteEngine

`wire` is the message format, `host` the engine host, `client` the worker's link to it (`RemoteEngine`,
`RemoteAdmission`), `supervisor` the parent process. With one worker the server runs in one process, as
before (docs/architecture.md says why).
"""
