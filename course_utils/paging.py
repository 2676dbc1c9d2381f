"""A CPU simulation of QLoRA's paged optimizers: optimizer state on a device of a few bytes, the rest on the host.

On a GPU, bitsandbytes' paged optimizers keep Adam's state in unified memory: when a long batch's activations
need the room, the driver pages the least recently used state out to CPU RAM and back in when the optimizer
touches it. ``page_schedule`` counts what that costs, step by step, with the same least-recently-used rule.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

__all__ = ["page_schedule", "adam_state_accesses"]


def page_schedule(steps: Sequence[Sequence[tuple[str, int]]], activations: Sequence[int],
                  budget: int) -> list[tuple[int, int, int]]:
    """``(bytes paged in, bytes paged out, peak device bytes)`` of each training step, least recently used out first.

    Step ``i`` first needs ``activations[i]`` bytes for its forward and backward (state is paged out until
    it fits beside them), then frees them and runs the optimizer, which touches the ``(name, nbytes)`` states
    of ``steps[i]`` in order (a missing state is paged in, evicting the least recently used ones). Everything
    starts on the host. Raises ``MemoryError`` when activations or one state alone exceed ``budget``.
    """
    if len(steps) != len(activations):
        raise ValueError(f"one activation size per step: {len(steps)} steps, {len(activations)} activation sizes")
    device, rows = OrderedDict(), []  # name -> bytes on the device, least recently used first

    def make_room(needed: int) -> int:
        freed = 0
        while device and sum(device.values()) + needed > budget:
            freed += device.popitem(last=False)[1]
        return freed

    for accesses, act in zip(steps, activations):
        if act > budget:
            raise MemoryError(f"activations of {act:,} bytes exceed the device budget of {budget:,} bytes")
        paged_out, paged_in = make_room(act), 0
        peak = sum(device.values()) + act
        for name, nbytes in accesses:
            if nbytes > budget:
                raise MemoryError(f"state {name!r} of {nbytes:,} bytes exceeds the device budget of {budget:,} bytes")
            if name in device:
                device.move_to_end(name)
                continue
            paged_out += make_room(nbytes)
            device[name] = nbytes
            paged_in += nbytes
            peak = max(peak, sum(device.values()))
        rows.append((paged_in, paged_out, peak))
    return rows


def adam_state_accesses(model) -> list[tuple[str, int]]:
    """The ``(name, bytes)`` of Adam's state for each trainable parameter, in the order an optimizer step visits them."""
    return [(name, 2 * 4 * p.numel()) for name, p in model.named_parameters() if p.requires_grad]  # fp32 m, v
