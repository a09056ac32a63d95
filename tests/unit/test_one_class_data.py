"""Class scores whose fp32 top-1 is the same class on every sample (openwakeword's timer model on speech that names
no timer: class 0 everywhere): top-1 agreement then proves little, and the check's line says so, as it does for a
one-probability output whose decisions all fall on one side. The verdict itself is unchanged."""

from __future__ import annotations

import numpy as np

from edgeq.checks import infer_all, score
from edgeq.checks.kinds import Context
from edgeq.checks.metrics import task_note
from edgeq.core.targets import Tolerances


def test_one_class_everywhere_is_flagged_mixed_classes_are_not():
    rng = np.random.default_rng(0)
    one = [np.concatenate([[[6.0]], rng.normal(0, 1, (1, 6))], axis=1) for _ in range(12)]  # class 0 wins every row
    spec = infer_all(("y",), [one], Context())[0]
    c = score(spec, one, [x + 0.01 for x in one], Tolerances())
    assert c.passed and "every fp32 top-1 on the data is class 0 (12 rows)" in task_note(c.to_dict())
    mixed = [rng.normal(0, 3, (1, 7)) for _ in range(12)]
    assert len({int(x.argmax()) for x in mixed}) > 1
    m = score(infer_all(("y",), [mixed], Context())[0], mixed, mixed, Tolerances())
    assert m.passed and "note" not in m.info
