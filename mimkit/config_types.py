"""The ranges of configuration numbers, each written once as a type.

A configuration field declares its range by its type (``depth: Count = 12``); :class:`mimkit.config_schema.Settings`
checks it when the dataclass is built, and errors name the field and the range.
"""

from __future__ import annotations

from typing import Annotated

from mimkit.config_schema import Bounds

Count = Annotated[int, Bounds(low=1)]
"""Sizes, depths, widths, heads, epochs, batch sizes, steps: a whole number of at least 1."""
NonNegativeInt = Annotated[int, Bounds(low=0)]
"""Seeds, worker counts, intervals where 0 switches something off."""
Positive = Annotated[float, Bounds(low=0, low_inclusive=False)]
"""Learning rates, MLP ratios, epsilons, temperatures, gradient-clipping norms."""
NonNegative = Annotated[float, Bounds(low=0)]
"""Weight decay, warm-up epochs, minimum learning rates, loss weights, Mixup/CutMix alphas."""
OpenUnit = Annotated[float, Bounds(low=0, high=1, low_inclusive=False, high_inclusive=False)]
"""Mask ratios: masking nothing leaves no loss (NaN at step 1), masking everything leaves no input."""
ZeroToOne = Annotated[float, Bounds(low=0, high=1, high_inclusive=False)]
"""Drop-path rates, label smoothing, Adam betas, momentum, shares that may be 0 but not 1."""
Fraction = Annotated[float, Bounds(low=0, high=1, low_inclusive=False)]
"""Shares that may be 1 but not 0: crop scales, label fractions, layer-wise lr decay."""
Probability = Annotated[float, Bounds(low=0, high=1)]
"""Probabilities of applying an augmentation."""
Finite = Annotated[float, Bounds()]
"""Any finite number (normalization means)."""
Above1 = Annotated[float, Bounds(low=1, low_inclusive=False)]
"""Factors that must enlarge (MixMAE's zoom-in fill)."""
