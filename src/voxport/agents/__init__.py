"""Voice agents: the speech WebSocket's service (contexts, text buffering, continuity)."""
