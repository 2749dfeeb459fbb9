"""The optional compiled hot path: one extension module per C file.

Everything else about the package is in pyproject.toml. Each
``cluster/speedups/<stem>.c`` builds ``cluster.speedups.<stem>`` (the stems
start with an underscore). Every extension is optional: without a C compiler
or the Python headers, or when one fails to compile, the build prints one
warning and installs the pure-Python package, which runs the same code paths
in Python (cluster/speedups/__init__.py decides at import).
"""

from __future__ import annotations

import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CCompilerError, CompileError, ExecError, PlatformError

HERE = Path(__file__).resolve().parent
SOURCES = sorted(p.relative_to(HERE).as_posix() for p in (HERE / "cluster" / "speedups").glob("*.c"))
BUILD_ERRORS = (CCompilerError, CompileError, ExecError, PlatformError, OSError)


def _extension(source: str) -> Extension:
    stem = Path(source).stem
    return Extension(
        f"cluster.speedups.{stem}",
        sources=[source],
        depends=[p.relative_to(HERE).as_posix() for p in (HERE / "cluster" / "speedups").glob("*.h")],
        extra_compile_args=["-O2", "-Wall", "-Wextra"],
        optional=True,
    )


class OptionalBuildExt(build_ext):
    """build_ext that never fails the install: a missing compiler or a
    compile error costs the compiled path, with one warning, not the package."""

    def run(self) -> None:
        try:
            super().run()
        except BUILD_ERRORS as error:
            self._skip("all", error)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except BUILD_ERRORS as error:
            self._skip(ext.name, error)

    @staticmethod
    def _skip(name: str, error: BaseException) -> None:
        print(f"WARNING: sipcluster: the compiled module {name} was not built ({error}); "
              "the pure-Python path runs instead", file=sys.stderr)


setup(ext_modules=[_extension(s) for s in SOURCES], cmdclass={"build_ext": OptionalBuildExt})
