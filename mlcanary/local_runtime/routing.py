"""Which deployment takes a request: live split and mirror share, deterministic rather than random.

Smooth weighted round-robin (as nginx does it) makes a 90/10 split exact over every 10 requests
instead of only on average, and a credit counter mirrors exactly `percent` of un-pinned requests.
A `Routing` is replaced as a whole when traffic changes, so each request sees one consistent map.
"""

from __future__ import annotations

from collections.abc import Mapping


class LiveSplit:
    def __init__(self, weights: Mapping[str, int]):
        self.weights = {name: int(w) for name, w in weights.items() if int(w) > 0}
        self.total = sum(self.weights.values())
        self.current = dict.fromkeys(self.weights, 0)

    def pick(self) -> str | None:
        if not self.total:
            return None
        for name, weight in self.weights.items():
            self.current[name] += weight
        chosen = max(self.current, key=self.current.__getitem__)
        self.current[chosen] -= self.total
        return chosen


class MirrorShare:
    def __init__(self, mirror: Mapping[str, int]):
        active = [(name, int(p)) for name, p in mirror.items() if int(p) > 0]
        self.target, self.percent = active[0] if active else (None, 0)
        self.credit = 0

    def take(self) -> str | None:
        """The deployment this request is copied to, or None."""
        if self.target is None:
            return None
        self.credit += self.percent
        if self.credit >= 100:
            self.credit -= 100
            return self.target
        return None


class Routing:
    def __init__(self, traffic: Mapping[str, int], mirror: Mapping[str, int]):
        self.traffic = dict(traffic)
        self.mirror_traffic = dict(mirror)
        self.live = LiveSplit(traffic)
        self.mirror = MirrorShare(mirror)
