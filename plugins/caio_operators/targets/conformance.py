"""mypy's check that every registered target keeps the ``Target`` port of ``base.py``.

Nothing imports this module (``base.py`` importing the targets would be an import cycle:
each target imports ``base``); ``make lint`` type-checks it with the rest of the package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from caio_operators.targets.base import Target
    from caio_operators.targets.caip import CaipTarget
    from caio_operators.targets.endpoint import EndpointTarget
    from caio_operators.targets.local import LocalTarget
    from caio_operators.targets.vertex import VertexTarget

    _LOCAL: Target = LocalTarget()
    _ENDPOINT: Target = EndpointTarget()
    _VERTEX: Target = VertexTarget()
    _CAIP: Target = CaipTarget()
