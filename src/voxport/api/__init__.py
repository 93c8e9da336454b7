"""The HTTP surface: routers, request models, the OpenAI error envelope."""
