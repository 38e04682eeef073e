"""Readiness: is a bundle ready to ship? Quality, calibration, robustness, load and gates.

``edgedl report`` (:mod:`.cli`) and ``edgedl convert --readiness DIR`` build a report with
:func:`readiness_report`, write it with :func:`write_report` and check a policy with
:func:`check_policy`.
"""

from .build import Scored, bundle_scorer, readiness_report, runner_scorer, source_scorer
from .files import write_report
from .policy import Policy, check_policy, load_policy

__all__ = [
    "Policy",
    "Scored",
    "bundle_scorer",
    "check_policy",
    "load_policy",
    "readiness_report",
    "runner_scorer",
    "source_scorer",
    "write_report",
]
