"""fada's models, schedulers, training, distillation, generation and evaluation."""

import logging

# diffusers imports bitsandbytes (a pyiqa dependency) when it is installed; on CPUs with AVX-512 BF16
# its import logs a warning about an optional `kernels` package that fada never uses.
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
