"""Matching rules on hand-built cases."""

import torch
from torchvision.ops import box_iou

from fusion import Detections
from fusion.calibration import match_detections, match_image


def gt(boxes, labels, crowd=None):
    crowd = crowd or [0] * len(boxes)
    return Detections(
        boxes, [1.0] * len(boxes), labels, (100, 100), {"iscrowd": torch.tensor(crowd, dtype=torch.bool)}
    )


def test_greedy_in_score_order_higher_score_takes_the_gt():
    # Two detections on one GT: the 0.9 box (IoU 0.64 listed second) wins although the 0.5 box overlaps more.
    det = Detections([[0, 0, 10, 10], [0, 0, 10, 8]], [0.5, 0.9], [0, 0])
    m = match_image(det, gt([[0, 0, 10, 10]], [0]))
    assert m.is_tp.tolist() == [False, True]
    assert m.gt_index.tolist() == [-1, 0]


def test_best_free_gt_is_taken():
    # Det A (0.9) overlaps GT0 by 1.0 and GT1 by 0.6; det B (0.8) overlaps GT0 by 0.6 and GT1 by 1.0.
    g = gt([[0, 0, 10, 10], [0, 0, 10, 6]], [0, 0])
    det = Detections([[0, 0, 10, 10], [0, 0, 10, 6]], [0.9, 0.8], [0, 0])
    assert match_image(det, g).gt_index.tolist() == [0, 1]
    # A single GT taken by the first: the second detection becomes a FP even though its IoU is >= 0.5.
    m = match_image(det, gt([[0, 0, 10, 10]], [0]))
    assert m.is_tp.tolist() == [True, False]


def test_iou_threshold_is_inclusive():
    # IoU = 50/100 = 0.5 exactly, and 49/100 just below.
    g = gt([[0, 0, 10, 10]], [0])
    assert match_image(Detections([[0, 0, 10, 5]], [0.9], [0]), g).is_tp.tolist() == [True]
    assert match_image(Detections([[0, 0, 10, 4.9]], [0.9], [0]), g).is_tp.tolist() == [False]
    assert match_image(Detections([[0, 0, 10, 5]], [0.9], [0]), g, iou_thr=0.51).is_tp.tolist() == [False]


def test_class_aware_and_agnostic():
    g = gt([[0, 0, 10, 10]], [1])
    det = Detections([[0, 0, 10, 10]], [0.9], [2])
    assert match_image(det, g).is_tp.tolist() == [False]
    assert match_image(det, g, class_agnostic=True).is_tp.tolist() == [True]


def test_crowd_absorbs_detections_and_is_never_a_tp():
    # A crowd region (0..50) and a normal GT (60..70). Two detections inside the crowd: both ignored (crowd
    # overlap is over the detection's area: 100/100 = 1 although IoU with the crowd box is 0.04). One far FP.
    g = gt([[0, 0, 50, 50], [60, 60, 70, 70]], [0, 0], crowd=[1, 0])
    det = Detections(
        [[0, 0, 10, 10], [5, 5, 15, 15], [60, 60, 70, 70], [80, 80, 90, 90]],
        [0.9, 0.8, 0.7, 0.6],
        [0, 0, 0, 0],
    )
    m = match_image(det, g)
    assert m.is_tp.tolist() == [False, False, True, False]
    assert m.ignored.tolist() == [True, True, False, False]


def test_a_normal_gt_is_preferred_over_a_crowd_one():
    g = gt([[0, 0, 10, 10], [0, 0, 10, 10]], [0, 0], crowd=[1, 0])
    m = match_image(Detections([[0, 0, 10, 10]], [0.9], [0]), g)
    assert m.is_tp.tolist() == [True] and m.ignored.tolist() == [False] and m.gt_index.tolist() == [1]


def test_batch_equals_per_image_and_keeps_input_order():
    g = torch.Generator().manual_seed(1)
    dets, gts = [], []
    for n, k in [(6, 3), (0, 2), (4, 0), (9, 5)]:
        boxes = torch.rand(n, 2, generator=g) * 60
        dets.append(
            Detections(
                torch.cat([boxes, boxes + 20], 1),
                torch.rand(n, generator=g),
                torch.randint(0, 2, (n,), generator=g),
            )
        )
        gb = torch.rand(k, 2, generator=g) * 60
        gts.append(
            gt(
                torch.cat([gb, gb + 20], 1).tolist() if k else torch.zeros(0, 4),
                torch.randint(0, 2, (k,), generator=g).tolist(),
            )
        )
    batched = match_detections(dets, gts, iou_thr=0.3)
    for d, t, b in zip(dets, gts, batched):
        single = match_image(d, t, iou_thr=0.3)
        assert torch.equal(single.is_tp, b.is_tp) and torch.equal(single.gt_index, b.gt_index)
        # Brute-force greedy reference.
        iou = box_iou(d.boxes, t.boxes) if len(t) else torch.zeros(len(d), 0)
        taken, expected = set(), [-1] * len(d)
        for i in torch.sort(d.scores, descending=True, stable=True).indices.tolist():
            best, index = -1.0, -1
            for j in range(len(t)):
                same = int(t.labels[j]) == int(d.labels[i])
                if j not in taken and same and float(iou[i, j]) >= 0.3 and float(iou[i, j]) > best:
                    best, index = float(iou[i, j]), j
            if index >= 0:
                taken.add(index)
                expected[i] = index
        assert b.gt_index.tolist() == expected
