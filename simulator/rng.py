"""Deterministic random streams: one ``random.Random`` per entity, derived from the run seed and a name.

Python's ``hash()`` of strings is salted per process, so names are hashed with BLAKE2 instead: the same
seed and name give the same stream in every process and on every machine.
"""

from __future__ import annotations

import hashlib
import random
import uuid


def derive_seed(seed: int, *parts: object) -> int:
    text = "/".join([str(seed), *map(str, parts)]).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big")


def rng_for(seed: int, *parts: object) -> random.Random:
    """An independent random stream for the entity named by ``parts`` (e.g. ``("car", 17)``)."""
    return random.Random(derive_seed(seed, *parts))


def uuid_from(rng: random.Random) -> str:
    """A version-4 UUID string drawn from ``rng`` (reproducible, unlike ``uuid.uuid4``)."""
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))
