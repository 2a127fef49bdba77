"""Policy parameters are validated whenever a policy is built: ranges, unknown names, a conflicting type, quorum."""

from __future__ import annotations

import pytest
import torch

from fusion import Detections, fuse, make_policy
from fusion.cli.fuse import parse_policy
from fusion.policy import PolicyParamsError
from fusion.registry import POLICIES

ONE = Detections(torch.tensor([[0.0, 0.0, 10.0, 10.0]]), torch.tensor([0.5]), torch.tensor([0]))


def test_updating_a_built_policy_is_validated_again() -> None:
    # issue 13 D6: the update used to be copied in without validation
    with pytest.raises(PolicyParamsError) as info:
        fuse([ONE, ONE], make_policy("wbf"), iou_thr=5, bogus=1)
    message = str(info.value)
    assert message.startswith("policy 'wbf': ")
    assert "iou_thr=5: Input should be less than or equal to 1" in message
    assert (
        "unknown parameter 'bogus' (known: weights, class_agnostic, iou_thr, skip_box_thr, conf_type"
        in message
    )


@pytest.mark.parametrize("name", sorted(POLICIES.names()))
def test_every_policy_lists_its_known_parameters(name: str) -> None:
    known = [k for k in POLICIES.get(name).Params.model_fields if k != "type"]
    with pytest.raises(PolicyParamsError, match=rf"unknown parameter 'nope' \(known: {', '.join(known)}\)"):
        make_policy(name, nope=1)


def test_a_type_parameter_naming_another_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="give the policy's name as the first word"):
        parse_policy(["wbf", "type=nms"])  # `--policy wbf type=nms` is refused on the command line already
    with pytest.raises(PolicyParamsError, match="parameter type='nms' names another policy"):
        make_policy("wbf", type="nms")  # and by the policy itself, for the Python API
    assert make_policy("wbf", type="wbf").params.type == "wbf"  # agreeing is harmless


def test_union_parameters_say_every_accepted_form() -> None:
    with pytest.raises(
        PolicyParamsError, match=r"quorum=-1: .*'affirmative', 'consensus' or 'unanimous' or .*greater than 0"
    ):
        make_policy("voting", quorum=-1)


def test_a_quorum_above_the_members_weight_is_refused() -> None:
    # issue 13 D15c: quorum 9 with two members gave an empty output
    with pytest.raises(
        PolicyParamsError, match=r"voting\.quorum=9 exceeds the total weight 2 of the 2 members"
    ):
        fuse([ONE, ONE], "voting", quorum=9)
    with pytest.raises(PolicyParamsError, match="quorum=3.5 exceeds the total weight 3"):
        fuse([ONE, ONE], "voting", quorum=3.5, weights=[2, 1])
    assert len(fuse([ONE, ONE], "voting", quorum=3, weights=[2, 1])) == 1  # exactly the total is reachable
