"""Builds the compiled kernels (ipsecoffload._fastpath).

IPSECOFFLOAD_BOUNDS_CHECK=1 rebuilds them with every arena access range-checked
(Cython boundscheck plus explicit range checks before each copy): slower, for
debugging and for the fuzz tests.

Compiler flags are chosen per compiler family (MSVC or the GCC-style ones: GCC, Clang, Apple
Clang, ICX), no host-specific -march flag: the x86 GHASH paths get their instruction sets per function
(crypto/ghash.h), so one wheel runs on every CPU of its architecture, and other architectures
(aarch64, arm64) build the portable GHASH path only.
"""
import os

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

checked = os.environ.get("IPSECOFFLOAD_BOUNDS_CHECK", "") not in ("", "0")

# compiler family -> (optimised, bounds-checked) flags
COMPILE_ARGS = {
    "msvc": (["/O2"], ["/Od", "/Zi"]),
    "unix": (["-O2"], ["-O1", "-g"]),  # GCC, Clang, Apple Clang, ICX; mingw32 too
}


class BuildExt(build_ext):
    """build_ext with the flags of the compiler it finds (setup.py docstring)."""

    def build_extensions(self):
        family = "msvc" if self.compiler.compiler_type == "msvc" else "unix"
        flags = COMPILE_ARGS[family][1 if checked else 0]
        for ext in self.extensions:
            ext.extra_compile_args = list(flags)
        super().build_extensions()


extension = Extension(
    "ipsecoffload._fastpath",
    ["ipsecoffload/_fastpath.pyx"],
    include_dirs=[numpy.get_include(), "ipsecoffload"],
    define_macros=[("IPO_BOUNDS_CHECK", "1" if checked else "0"),
                   ("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
)

setup(
    cmdclass={"build_ext": BuildExt},
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
