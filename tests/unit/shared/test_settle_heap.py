"""What a service does to the collector once it is up (openlines.runner.settle_heap)."""

from __future__ import annotations

import gc

from openlines import runner


def test_a_settled_heap_is_frozen_and_young_objects_are_collected_less_often() -> None:
    before = gc.get_threshold()
    try:
        runner.settle_heap()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (runner.YOUNG_THRESHOLD, before[1], before[2])
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
