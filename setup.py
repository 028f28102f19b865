"""Builds the compiled kernels (ipsecoffload._fastpath).

IPSECOFFLOAD_BOUNDS_CHECK=1 rebuilds them with every arena access range-checked
(Cython boundscheck plus explicit range checks before each copy): slower, for
debugging and for the fuzz tests.
"""
import os

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

checked = os.environ.get("IPSECOFFLOAD_BOUNDS_CHECK", "") not in ("", "0")

extension = Extension(
    "ipsecoffload._fastpath",
    ["ipsecoffload/_fastpath.pyx"],
    include_dirs=[numpy.get_include(), "ipsecoffload"],
    define_macros=[("IPO_BOUNDS_CHECK", "1" if checked else "0"),
                   ("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    extra_compile_args=["-O2"] if not checked else ["-O1", "-g"],
)

setup(
    ext_modules=cythonize(
        [extension],
        language_level=3,
        compiler_directives={
            "boundscheck": checked,
            "wraparound": False,
            "initializedcheck": checked,
            "cdivision": True,
        },
        # The two builds differ only in directives: keep their C files apart.
        build_dir="build/cython-checked" if checked else "build/cython",
    ),
)
