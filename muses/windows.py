"""Overlapping windows over long token sequences, and stitching their token states back together.

A document of ``T`` content tokens that does not fit in the model's window (``W`` content tokens, specials aside)
is cut into windows that overlap by ``overlap`` tokens. Each token keeps the state from the window in which it is
furthest from an edge: the cut between two windows lies in the middle of their overlap. No token is dropped.

Example::

    >>> plan_windows(300, width=254, overlap=64)
    [(0, 182), (118, 300)]
    >>> states = [torch.full((182, 1), 0.0), torch.full((182, 1), 1.0)]
    >>> stitched = stitch(states, [(0, 182), (118, 300)])
    >>> stitched.shape, int(stitched[149]), int(stitched[150])   # the cut is the middle of the overlap [118, 182)
    (torch.Size([300, 1]), 0, 1)
"""

from __future__ import annotations

import torch


def plan_windows(n_tokens: int, width: int, overlap: int) -> list[tuple[int, int]]:
    """Half-open token ranges ``[(start, end), ...]`` covering ``range(n_tokens)``, each at most ``width`` long.

    Uses the fewest windows that keep at least ``overlap`` tokens between neighbours, all of the same, smallest
    sufficient length, spread evenly: a 300-token text with ``width=254, overlap=64`` gets two windows of 182 tokens,
    not two of 254. Shorter windows are cheaper (attention is quadratic) and give every token more balanced context.

    Raises:
        ValueError: if ``overlap`` is not in ``[0, width)``.
    """
    if width <= 0 or not 0 <= overlap < width:
        raise ValueError(f"window overlap must be in [0, {width}), got {overlap}")
    if n_tokens <= width:
        return [(0, n_tokens)]
    k = -(-(n_tokens - overlap) // (width - overlap))  # fewest windows: n <= k * width - (k - 1) * overlap
    size = -(-(n_tokens + (k - 1) * overlap) // k)  # smallest equal length that still covers with the overlap
    return [((i * (n_tokens - size)) // (k - 1), (i * (n_tokens - size)) // (k - 1) + size) for i in range(k)]


def stitch(window_states: list[torch.Tensor], windows: list[tuple[int, int]]) -> torch.Tensor:
    """Stitch per-window content states back into one sequence.

    Args:
        window_states: one ``[end - start, H]`` tensor per window (content tokens only).
        windows: the ranges from :func:`plan_windows`.

    Returns:
        ``[T, H]`` states, where each token's state comes from the window where it is most central.
    """
    if len(windows) == 1:
        return window_states[0]
    pieces = []
    for i, ((start, end), states) in enumerate(zip(windows, window_states, strict=True)):
        lo = start if i == 0 else (start + windows[i - 1][1]) // 2  # middle of the overlap with the previous window
        hi = end if i == len(windows) - 1 else (windows[i + 1][0] + end) // 2
        pieces.append(states[lo - start : hi - start])
    return torch.cat(pieces)
