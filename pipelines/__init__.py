"""fada's models, schedulers, training, distillation, generation and evaluation."""

import logging

# diffusers imports bitsandbytes (a pyiqa dependency) when it is installed; on CPUs with AVX-512 BF16
# its import logs a warning about an optional `kernels` package that fada never uses.
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


def __getattr__(name: str):
    """``from pipelines import FadaPipeline`` without importing torch with the package."""
    if name in ("FadaPipeline", "GenerationResult"):
        from pipelines import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'pipelines' has no attribute {name!r}")
