"""Overlapping windows cover every token, and stitching keeps each token's most central state."""

from __future__ import annotations

import itertools

import pytest
import torch

from muses.windows import plan_windows, stitch


@pytest.mark.parametrize("n", [0, 1, 254, 255, 600, 100_000])
def test_windows_cover_every_token_within_width(n: int) -> None:
    plan = plan_windows(n, 254, 64)
    assert plan[0][0] == 0 and plan[-1][1] == n
    assert all(e - s <= 254 for s, e in plan)
    for (_, e0), (s1, _) in itertools.pairwise(plan):
        assert s1 < e0, "consecutive windows must overlap"
        assert e0 - s1 >= 64


def test_stitch_takes_each_token_from_the_window_where_it_is_most_central() -> None:
    plan = plan_windows(20, 8, 4)
    # state value = position inside its window, so we can see which window each token came from
    states = [torch.arange(e - s, dtype=torch.float32)[:, None] + 100 * w for w, (s, e) in enumerate(plan)]
    out = stitch(states, plan)
    assert out.shape == (20, 1)
    source = (out[:, 0] // 100).long().tolist()
    pos = (out[:, 0] % 100).long().tolist()
    for t in range(20):
        s, e = plan[source[t]]
        assert s + pos[t] == t, "a token's state must come from its own position"
        margin = min(t - s, e - 1 - t)
        for s2, e2 in plan:
            if s2 <= t < e2 and (s2, e2) != (s, e):
                assert margin >= min(t - s2, e2 - 1 - t) - 1


def test_bad_overlap() -> None:
    with pytest.raises(ValueError, match="overlap"):
        plan_windows(10, 8, 8)


def test_windows_are_as_few_and_as_short_as_the_overlap_allows() -> None:
    assert plan_windows(300, 254, 64) == [(0, 182), (118, 300)]
    for n in range(255, 3000, 37):
        plan = plan_windows(n, 254, 64)
        k = len(plan)
        assert n > (k - 1) * 254 - (k - 2) * 64, "one window fewer would have been enough"
        assert len({e - s for s, e in plan}) == 1
