"""The load plan: which prompt and seed each request of a run gets.

Every request asks for the same bounded amount of work (a fixed `max_length` and one sentence per prompt),
so that runs on random-weight checkpoints, whose stop head never fires, are comparable: each request then
yields exactly `max_length` steps of audio.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

# One sentence each: streaming synthesises one segment per sentence, and a single segment is what makes
# the audio per request exactly max_length x 0.16 s on checkpoints that never stop by themselves.
PROMPTS: tuple[str, ...] = (
    "Good morning.",
    "The kettle is whistling in the kitchen.",
    "Please leave the parcel with the neighbour across the street.",
    "Rain is expected to spread from the west during the late afternoon.",
    "Could you read the last paragraph once more, a little more slowly?",
    "The library closes early on public holidays, so plan your visit accordingly.",
    "Seven silver swans swam silently across the still, dark lake at dawn.",
    "Our train to the coast leaves from platform four in twenty minutes.",
    "She tuned the old piano by ear, one stubborn key at a time.",
    "Thank you for calling, all of our agents are currently helping other customers.",
    "The recipe calls for two cups of flour, a pinch of salt and three ripe bananas.",
    "When the power came back on, every clock in the house blinked twelve at once.",
    "Turn left at the roundabout, then keep going until you see the blue gate.",
    "A gentle breeze carried the smell of cut grass and woodsmoke over the hills, "
    "and somewhere far away a dog began to bark.",
    "Remember to back up your files before installing the update, because the process "
    "cannot be undone once it has started.",
    "The committee weighed every proposal with care, comparing cost, schedule and risk, "
    "before it finally chose the smallest and most modest plan on the table.",
)


@dataclass(frozen=True)
class RequestSpec:
    index: int  # position in the run, across levels: names the request in the server's log
    prompt_index: int
    text: str
    seed: int
    repeat: bool  # the same text and seed as a request that already succeeded in this run


class LoadPlan:
    """Which prompt and seed each request gets.

    Fresh requests get a seed no earlier request of the run used (a per-run nonce plus a counter), so
    a caching server misses them. Repeats reuse the (text, seed) of a request that has already
    *completed* successfully: a streamed response is cached only once its body is complete, so repeating
    one still in flight would measure nothing but a second miss. A repeat due before anything has
    completed is sent fresh instead (and counted as fresh).
    """

    def __init__(self, nonce: int, repeat_fraction: float):
        self.nonce = nonce
        self.repeat_fraction = repeat_fraction
        self._rng = random.Random(nonce)
        self._done: list[RequestSpec] = []
        self._fresh = 0
        self._sent = 0

    def repeat_due(self, position: int) -> bool:
        """Spread the repeats evenly through a level rather than drawing them at random, so that a level
        of n requests carries round-down(n × fraction) of them whatever the seed."""

        def share(k: int) -> int:
            # Rounding first keeps 0.1 × 10 from landing at 0.999... and losing a repeat.
            return math.floor(round(k * self.repeat_fraction, 9))

        return share(position + 1) > share(position)

    def next(self, position: int) -> RequestSpec:
        index = self._sent
        self._sent += 1
        if self.repeat_due(position) and self._done:
            original = self._rng.choice(self._done)
            return RequestSpec(index, original.prompt_index, original.text, original.seed, repeat=True)
        k = self._fresh
        self._fresh += 1
        prompt = k % len(PROMPTS)
        return RequestSpec(index, prompt, PROMPTS[prompt], (self.nonce + k) % 2**32, repeat=False)

    def completed(self, spec: RequestSpec) -> None:
        if not spec.repeat:
            self._done.append(spec)
