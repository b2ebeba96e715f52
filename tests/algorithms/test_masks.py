"""Mask-plane helpers: the EDGE strips set in place are edge_mask's pixels; bits are ORed, never cleared."""

from __future__ import annotations

import numpy as np

from twinkles.algorithms.detection import edge_mask
from twinkles.algorithms.masks import set_border_planes, set_mask_planes
from twinkles.image import mask_bit


def test_border_planes_are_edge_mask_and_keep_other_bits():
    mask = np.zeros((40, 50), np.int32)
    mask[20, 25] = mask_bit("SAT")
    set_border_planes(mask, 3, "EDGE")
    assert np.array_equal((mask & mask_bit("EDGE")) != 0, edge_mask(mask.shape, 3))
    assert mask[20, 25] == mask_bit("SAT")
    set_border_planes(mask, 0, "EDGE")  # no border: nothing changes
    assert np.array_equal((mask & mask_bit("EDGE")) != 0, edge_mask(mask.shape, 3))


def test_set_mask_planes_ors_the_bits_where_true():
    mask = np.full((4, 4), mask_bit("BAD"), np.int32)
    where = np.zeros((4, 4), bool)
    where[1, 2] = True
    set_mask_planes(mask, where, "CR", "INTRP")
    assert mask[1, 2] == mask_bit("BAD", "CR", "INTRP") and (mask[~where] == mask_bit("BAD")).all()
