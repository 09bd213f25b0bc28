"""Hypothesis settings of the property-based tests (issue 23, item 3).

Profiles: ``ci`` (chosen when ``CI`` is set, as tox passes it): a fixed, bounded number of
examples per test, derandomized so a CI run is reproducible; ``dev`` (the default): the same
bound with fresh random examples each run; ``deep``: many more examples, for a fuzzing session
(``HYPOTHESIS_PROFILE=deep pytest tests/fuzz``). No deadline (the box is shared and slow) and no
example database (nothing is written into the working tree).
"""

from __future__ import annotations

import os
import tempfile

from hypothesis import HealthCheck, settings
from hypothesis.configuration import set_hypothesis_home_dir

# A failing example's patch (and anything else Hypothesis stores) goes to a temporary folder,
# never into the working tree.
set_hypothesis_home_dir(os.path.join(tempfile.gettempdir(), "bmssl-hypothesis"))

_COMMON = {
    "deadline": None,
    "database": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}
#: examples per property in CI and by default; each property test multiplies it by its params
BOUNDED_EXAMPLES = 20
settings.register_profile("ci", max_examples=BOUNDED_EXAMPLES, derandomize=True, **_COMMON)
settings.register_profile("dev", max_examples=BOUNDED_EXAMPLES, **_COMMON)
settings.register_profile("deep", max_examples=1000, **_COMMON)
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev")
)
