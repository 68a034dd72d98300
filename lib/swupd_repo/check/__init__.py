"""The release gate: prove a repository is consistent and that every update path works.

:mod:`.consistency` checks every published file a device may fetch; :mod:`.simulation`
installs and updates scratch roots over real HTTP and compares them with the image;
:mod:`.gate` runs both and raises :class:`CheckFailed` (a ``CheckError``) with the report.
"""

from .gate import check_repository
from .report import CheckFailed, CheckReport, Simulation

__all__ = ["CheckFailed", "CheckReport", "Simulation", "check_repository"]
