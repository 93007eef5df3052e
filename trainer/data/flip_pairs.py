"""Left/right keypoint pairs for horizontal flips.

Pairs are inferred from keypoint names (``left_eye``/``right_eye``, ``LeftEye``/``RightEye``, ``eye_l``/``eye_r``,
``L_eye``/``R_eye``) or given explicitly, either as index or name pairs or as extra side-token pairs (for example
``("lf", "rf")`` pairs ``paw_lf`` with ``paw_rf``). Names whose sides are encoded some other way (``paw1LH`` with
``paw4RH``) need explicit pairs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

#: Token pairs recognised without being told; tokens are compared lower-case.
DEFAULT_SIDE_TOKENS: tuple[tuple[str, str], ...] = (("left", "right"), ("l", "r"))

_TOKEN_RE = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")

FlipPairSpec = Sequence[tuple[int, int]] | Sequence[tuple[str, str]]


def name_tokens(name: str) -> tuple[str, ...]:
    """Split a keypoint name into lower-case tokens at separators, case changes and digits.

    ``"left_eye"`` -> ``("left", "eye")``; ``"LeftEye"`` -> ``("left", "eye")``; ``"paw1LH_top"`` ->
    ``("paw", "1", "lh", "top")``.
    """
    return tuple(token.lower() for token in _TOKEN_RE.findall(name))


def infer_flip_pairs(
    names: Sequence[str], side_tokens: Sequence[tuple[str, str]] = ()
) -> list[tuple[int, int]]:
    """Infer left/right index pairs from keypoint names.

    A name pairs with another when swapping its single side token (``left``<->``right``, ``l``<->``r`` and any
    ``side_tokens`` given) gives exactly the other name's tokens, and the relation is mutual. Names with no or
    several side tokens stay unpaired (they map to themselves under a flip).

    Returns:
        Pairs ``(i, j)`` with ``i < j``, sorted.
    """
    swaps: dict[str, str] = {}
    for left, right in (*DEFAULT_SIDE_TOKENS, *side_tokens):
        left_l, right_l = left.lower(), right.lower()
        if not left_l or not right_l or left_l == right_l:
            raise ValueError(f"side token pair {(left, right)!r} must be two different non-empty tokens")
        swaps[left_l] = right_l
        swaps[right_l] = left_l
    tokens = [name_tokens(name) for name in names]
    index_of: dict[tuple[str, ...], int] = {}
    for index, toks in enumerate(tokens):
        index_of.setdefault(toks, index)

    def mirror(toks: tuple[str, ...]) -> tuple[str, ...] | None:
        positions = [i for i, token in enumerate(toks) if token in swaps]
        if len(positions) != 1:
            return None
        out = list(toks)
        out[positions[0]] = swaps[out[positions[0]]]
        return tuple(out)

    pairs: set[tuple[int, int]] = set()
    for index, toks in enumerate(tokens):
        mirrored = mirror(toks)
        other = index_of.get(mirrored) if mirrored is not None else None
        if other is None or other == index or mirror(tokens[other]) != toks:
            continue
        pairs.add((min(index, other), max(index, other)))
    return sorted(pairs)


# a two-capital code led by L or R (``LH``, ``RF``): how many animal skeletons spell a side (longer capitals,
# ``LED``, are words)
_SIDE_CODE_RE = re.compile(r"(?<![A-Z])[LR][A-Z](?![A-Za-z])")


def sided_but_unpaired(names: Sequence[str], pairs: Sequence[tuple[int, int]]) -> list[str]:
    """Names that look like one side of the body yet have no flip partner in ``pairs``: a side token
    (``left``, ``r``, ...) or a side code (``paw1LH``). A horizontal flip would mirror them without swapping
    them with their other side, teaching the model wrong labels."""
    paired = {i for pair in pairs for i in pair}
    swappable = {token for pair in DEFAULT_SIDE_TOKENS for token in pair}
    return [
        name for i, name in enumerate(names)
        if i not in paired and (swappable & set(name_tokens(name)) or _SIDE_CODE_RE.search(name))
    ]  # fmt: skip


def resolve_flip_pairs(names: Sequence[str], pairs: FlipPairSpec) -> list[tuple[int, int]]:
    """Turn explicit pairs (of indices or of names) into sorted index pairs, checking them.

    Raises:
        ValueError: an index out of range, an unknown name, a keypoint paired with itself or used twice.
    """
    num = len(names)
    index_of = {name: i for i, name in enumerate(names)}
    seen: set[int] = set()
    out: list[tuple[int, int]] = []
    for pair in pairs:
        if len(pair) != 2:
            raise ValueError(f"flip pair {pair!r} must have exactly two entries")
        resolved: list[int] = []
        for item in pair:
            if isinstance(item, str):
                if item not in index_of:
                    raise ValueError(
                        f"flip pair {pair!r}: unknown keypoint name {item!r}; names are {list(names)}"
                    )
                resolved.append(index_of[item])
            elif isinstance(item, int) and not isinstance(item, bool):
                if not 0 <= item < num:
                    raise ValueError(f"flip pair {pair!r}: index {item} out of range for {num} keypoints")
                resolved.append(item)
            else:
                raise ValueError(f"flip pair {pair!r}: entries must be keypoint names or 0-based indices")
        a, b = resolved
        if a == b:
            raise ValueError(f"flip pair {pair!r} pairs a keypoint with itself")
        if a in seen or b in seen:
            raise ValueError(f"flip pair {pair!r} uses a keypoint that is already in another pair")
        seen.update((a, b))
        out.append((min(a, b), max(a, b)))
    return sorted(out)


def flip_permutation(num_keypoints: int, pairs: Sequence[tuple[int, int]]) -> list[int]:
    """The index map of a horizontal flip: ``flipped[i] = original[perm[i]]``."""
    perm = list(range(num_keypoints))
    for a, b in pairs:
        perm[a], perm[b] = b, a
    return perm
