"""fusion.boxes: conversions round-trip, equal torchvision and hand-derived values, numpy in -> numpy out."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fusion.boxes import box_area, box_convert, box_iou

XYWH = np.array([[10.0, 20.0, 5.0, 8.0], [0.1, 0.2, 0.3, 0.4]])
XYXY = np.array([[10.0, 20.0, 15.0, 28.0], [0.1, 0.2, 0.1 + 0.3, 0.2 + 0.4]])
CXCYWH = np.array([[12.5, 24.0, 5.0, 8.0]])


def test_hand_derived_values_and_numpy_stays_numpy() -> None:
    xyxy = box_convert(XYWH, "xywh", "xyxy")
    assert isinstance(xyxy, np.ndarray) and xyxy.dtype == np.float64
    # the same float64 sums a numpy script computes, bit for bit
    np.testing.assert_array_equal(xyxy, np.concatenate([XYWH[:, :2], XYWH[:, :2] + XYWH[:, 2:]], axis=1))
    np.testing.assert_array_equal(xyxy[0], XYXY[0])
    np.testing.assert_array_equal(box_convert(XYXY[:1], "xyxy", "cxcywh"), CXCYWH)
    np.testing.assert_array_equal(box_convert(CXCYWH, "cxcywh", "xywh"), XYWH[:1])
    half = box_convert(np.array([[1, 2, 4, 6]], dtype=np.float32)[:, ::-1], "xyxy", "xywh")  # reversed view
    assert half.dtype == np.float32 and half.tolist() == [[6, 4, -4, -3]]


def test_tensors_keep_dtype_and_leading_dims() -> None:
    boxes = torch.tensor(XYXY).reshape(1, 2, 4).expand(3, 2, 4)
    out = box_convert(boxes, "xyxy", "xywh")
    assert out.shape == (3, 2, 4) and out.dtype == torch.float64
    assert torch.equal(out[2], torch.tensor(box_convert(XYXY, "xyxy", "xywh")))
    with pytest.raises(ValueError, match=r"in_fmt='xyxy2'"):
        box_convert(boxes, "xyxy2", "xywh")  # type: ignore[arg-type]


@settings(max_examples=50, deadline=None)
@given(arrays(np.float64, (7, 4), elements=st.floats(0, 1000, allow_subnormal=False)))
def test_round_trips_are_close(values: np.ndarray) -> None:
    for fmt in ("xywh", "cxcywh"):
        back = box_convert(box_convert(values, "xyxy", fmt), fmt, "xyxy")
        np.testing.assert_allclose(back, values, rtol=1e-12, atol=1e-9)


def test_area_and_iou() -> None:
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 5.0, 5.0]])
    b = torch.tensor([[5.0, 0.0, 15.0, 10.0], [5.0, 5.0, 5.0, 5.0], [20.0, 20.0, 30.0, 40.0]])
    assert box_area(b).tolist() == [100.0, 0.0, 200.0]
    iou = box_iou(a, b)
    # 50 / (100 + 100 - 50); two zero-area boxes: 0, not NaN
    assert iou.tolist() == [[pytest.approx(1 / 3), 0.0, 0.0], [0.0, 0.0, 0.0]]
    batched = box_iou(torch.stack([a, a + 1]), torch.stack([b, b + 1]))
    assert batched.shape == (2, 2, 3) and torch.equal(batched[1], batched[0])
