"""The built-in Wyoming server (Home Assistant's speech protocol): an adapter beside `api/` over the same
`SpeechService` the HTTP routes call. The protocol itself is the maintained `wyoming` library's; this
package only maps its events onto speech requests (docs/home-assistant.md)."""

from voxport.wyoming_server.server import WyomingServer

__all__ = ["WyomingServer"]
