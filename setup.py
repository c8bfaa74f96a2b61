"""Build hook for the one compiled part: the fused exact top-k kernel (src/twotower/index/_fused_topk.c).

Everything else is in pyproject.toml. The extension is optional: where no C compiler is found the install
goes on without it, and the exact backend uses its BLAS + FAISS-heaps path (same results, ~1.4x slower
batched search; ``python -c "import twotower.index.exact as e; print(e.kernel())"`` says which runs).
"""

import sys

from setuptools import Extension, setup

flags = [] if sys.platform == "win32" else ["-O3"]
setup(
    ext_modules=[
        Extension(
            "twotower.index._fused_topk",
            ["src/twotower/index/_fused_topk.c"],
            extra_compile_args=flags,
            optional=True,
        )
    ]
)
