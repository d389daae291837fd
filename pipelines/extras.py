"""Optional dependencies: each serves one option and comes with an extra of the `fada` package.

``pip install fada`` brings what the lifecycle and `fada demo` need; `fada serve` needs
``fada[serve]`` (gradio), ``fada curate --engine ray`` needs ``fada[ray]`` and ``--optimizer
adamw8bit`` needs ``fada[train]`` (bitsandbytes); ``fada[all]`` brings all three. The hallo
family's face embedding (``identity_encoder`` insightface) needs ``fada[insightface]``, which
``fada[all]`` leaves out: InsightFace's models are for non-commercial research only, and its
package builds from source (no wheel on PyPI), so a user opts in. A missing one is a one-line
error that names its extra.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from pipelines.errors import FadaError

# module -> the extra that installs it
EXTRAS = {"gradio": "serve", "ray": "ray", "bitsandbytes": "train", "insightface": "insightface"}


class MissingExtraError(FadaError):
    """An optional dependency that the chosen option needs is not installed."""


def require(module: str, feature: str) -> ModuleType:
    """Import ``module`` (a key of `EXTRAS`), or raise `MissingExtraError` naming ``feature`` and the extra."""
    try:
        return importlib.import_module(module)
    except ImportError:
        extra = EXTRAS[module]
        raise MissingExtraError(
            f"{feature} needs {module}, which is not installed; install it with pip install 'fada[{extra}]'."
        ) from None
