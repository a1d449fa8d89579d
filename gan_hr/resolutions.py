"""Power-of-two resolutions: the one test and the one ladder that models, config, schedule, SWD
and data_prep share.

Every image side in gan_hr doubles from one level to the next (a block per resolution, one
shard set per resolution, one pyramid level per halving), so "is this a resolution" and "which
resolutions lie between two" are asked in many places; asking them here keeps the answers equal.
"""

from __future__ import annotations


def is_power_of_two(n: object) -> bool:
    """True for an int (not a bool) equal to 1, 2, 4, 8, ...; False for anything else."""
    return isinstance(n, int) and not isinstance(n, bool) and n >= 1 and n & (n - 1) == 0


def resolutions_between(low: int, high: int) -> list[int]:
    """low, 2 low, 4 low, ... up to high inclusive (empty when low > high)."""
    out = []
    res = low
    while res <= high:
        out.append(res)
        res *= 2
    return out


def check_max_res(max_res: object, minimum: int, model: str) -> int:
    """`max_res`, or a ValueError naming `model` unless it is a power of two >= `minimum`."""
    if not (is_power_of_two(max_res) and max_res >= minimum):
        raise ValueError(f"{model} max_res must be a power of two >= {minimum}, got {max_res!r}")
    return max_res
