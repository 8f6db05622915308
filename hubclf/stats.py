"""The statistics hubclf reports with its accuracies: a confidence interval for one accuracy, and a paired test
for two classifiers scored on the same images. Pure functions, no dependencies.

    wilson_interval(18, 20)    # (0.699, 0.972): 90% measured on 20 images
    mcnemar_p_value(0, 5)      # 0.03125: 5 images fixed, none broken
"""

from __future__ import annotations

import math


def wilson_interval(correct: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of an accuracy ``correct / total`` (95% for z=1.96); sane at 0%, 100% and small n.

        wilson_interval(18, 20)   # (0.699, 0.972)
    """
    if total <= 0:
        return (0.0, 1.0)
    p = correct / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def mcnemar_p_value(only_a: int, only_b: int) -> float:
    """Exact one-sided McNemar test that classifier B is better than A on the same images.

    ``only_a``: images A gets right and B wrong; ``only_b``: the reverse. Under "equally good", each of the
    ``only_a + only_b`` disagreements is a fair coin, so the p-value is P(Binomial(n, 1/2) >= only_b).

        mcnemar_p_value(0, 5)   # 0.03125: five fixes, no breakage
    """
    if only_a < 0 or only_b < 0:
        raise ValueError(f"counts must be non-negative, got {only_a}, {only_b}")
    n = only_a + only_b
    if n == 0:
        return 1.0
    return sum(math.comb(n, k) for k in range(only_b, n + 1)) / 2**n
