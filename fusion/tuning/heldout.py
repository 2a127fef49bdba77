"""Tuning measured on images the search did not see: one search per policy and fold, equal budgets.

For each policy the same seeded search (:func:`~fusion.tuning.search.tune`, ``trials`` settings) runs on each
fold's fit images; the setting it finds is scored on the fold's held-out images, beside the default config (WBF at
ensemble-boxes' defaults, equal weights) and the best member on the same images. The held-out AP of a policy is thus
the AP one gets by running this search and using its result, which is what the user decides on. The config written
comes from one more search of the winning policy on the final images (all of them, or ``--val``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from fusion.holdout import HeldOutProtocol, Spread, spread
from fusion.tuning.search import Scorer, Trial, default_setting, tune

__all__ = ["PolicyResult", "tune_heldout"]


@dataclass
class PolicyResult:
    """One policy's search: the final search's best setting and history, and its held-out numbers.

    Attributes:
        policy: The policy searched.
        best: Best trial of the search on the final images (its stats are in-sample: never reported as a result).
        history: Every trial of that search, in order.
        held_out: AP on each fold's held-out images of the setting that fold's search found.
        gain_over_default: Per fold, that AP minus the default config's on the same images.
        gain_over_best_member: Per fold, that AP minus the best member's on the same images.
        folds: Per fold: the setting found, its held-out AP, the default's and the best member's.
    """

    policy: str
    best: Trial
    history: list[Trial]
    held_out: Spread
    gain_over_default: Spread
    gain_over_best_member: Spread
    folds: list[dict[str, Any]] = field(default_factory=list)


def _baselines(scorer: Scorer, default: dict[str, Any], ids: Sequence[Any], metric: str) -> dict[str, Any]:
    members = scorer.member_stats(ids)
    best = max(members, key=lambda n: members[n][metric])
    return {
        "default": scorer.stats(default, ids)[metric],
        "best member": best,
        "member": members[best][metric],
    }


def tune_heldout(
    scorer: Scorer,
    protocol: HeldOutProtocol,
    policies: Sequence[str],
    trials: int,
    seed: int = 0,
    metric: str = "AP",
    progress: bool = True,
) -> list[PolicyResult]:
    """Search every policy with the same budget on each fold and on the final images; see the module docstring."""
    if not policies:
        raise ValueError("no policy to search: give at least one (e.g. --policies wbf,voting)")
    num_members = len(scorer.calibrated)
    default = default_setting("wbf", num_members)
    baselines = [_baselines(scorer, default, fold.held_out, metric) for fold in protocol.folds]
    results = []
    for policy in policies:

        def search(image_ids: Any, policy: str = policy) -> Any:
            return tune(
                {},
                scorer.gt,
                policies=[policy],
                trials=trials,
                seed=seed,
                metric=metric,
                progress=False,
                scorer=scorer,
                image_ids=image_ids,
            )

        folds = []
        for k, (fold, base) in enumerate(zip(protocol.folds, baselines)):
            found, _ = search(fold.fit)
            value = scorer.stats(found.policy, fold.held_out)[metric]
            folds.append({"fold": k + 1, "setting": found.policy, metric: value, **base})
        best, history = search(protocol.final)
        result = PolicyResult(
            policy,
            best,
            history,
            spread([f[metric] for f in folds]),
            spread([f[metric] - f["default"] for f in folds]),
            spread([f[metric] - f["member"] for f in folds]),
            folds,
        )
        results.append(result)
        if progress:
            print(
                f"{policy:<10} held-out {metric} {result.held_out}  gain over default {result.gain_over_default}  "
                f"over best member {result.gain_over_best_member}"
            )
    return results


def winner(results: Sequence[PolicyResult]) -> PolicyResult:
    """The policy with the highest mean held-out AP (the first on a tie)."""
    return max(results, key=lambda r: (r.held_out.mean, -results.index(r)))
