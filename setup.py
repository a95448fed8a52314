"""Build script: compiles every qpack/_kernels/*.pyx into an extension module.

Flags: -O3 always; OpenMP when the compiler accepts it (probed, not assumed);
-march=native unless the environment sets QPACK_PORTABLE=1. The vector kernels do not
depend on -march: each is compiled for its instruction set by a function attribute and
chosen at run time (qpack/_kernels/include/qk_isa.h), so a portable build runs them too.
The flags are recorded in the extensions (qpack.kernel_info()). There is no pure-Python
fallback: a failed compile fails the install with the compiler's message.
"""

import glob
import os
import shutil
import sys
import tempfile

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

PORTABLE = os.environ.get("QPACK_PORTABLE", "0") not in ("", "0")


def _compiler_accepts(compiler, flags, source="int main(void){return 0;}\n", link=None):
    """Return True if the build's C compiler compiles and links ``source`` with ``flags``."""
    tmp = tempfile.mkdtemp(prefix="qpack-probe-")
    try:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as fh:
            fh.write(source)
        objs = compiler.compile([src], output_dir=tmp, extra_postargs=flags)
        compiler.link_executable(objs, "probe", output_dir=tmp, extra_postargs=link or flags)
        return True
    except Exception:
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


OPENMP_PROBE = (
    "#include <omp.h>\n"
    "int main(void){int n=0;\n#pragma omp parallel reduction(+:n)\nn+=1;\nreturn n>0?0:1;}\n"
)


class BuildExt(build_ext):
    """build_ext that picks -march=native and OpenMP by probing the compiler."""

    def build_extensions(self):
        compile_flags = ["-O3", "-fno-math-errno", "-fno-trapping-math"]
        link_flags = []
        if not PORTABLE and _compiler_accepts(self.compiler, ["-march=native"]):
            compile_flags.append("-march=native")
        if _compiler_accepts(self.compiler, ["-fopenmp"], OPENMP_PROBE, ["-fopenmp"]):
            compile_flags.append("-fopenmp")
            link_flags.append("-fopenmp")
        else:
            print("qpack: compiler does not accept -fopenmp; kernels build single-threaded",
                  file=sys.stderr)
        flags_text = " ".join(compile_flags)
        for ext in self.extensions:
            ext.define_macros = list(ext.define_macros or []) + [
                ("QK_BUILD_FLAGS", '"' + flags_text + '"')]
            ext.extra_compile_args = compile_flags + list(ext.extra_compile_args or [])
            ext.extra_link_args = link_flags + list(ext.extra_link_args or [])
        super().build_extensions()


KERNEL_DIR = os.path.join("qpack", "_kernels")
INCLUDE_DIR = os.path.join(KERNEL_DIR, "include")


def _extensions():
    headers = sorted(glob.glob(os.path.join(INCLUDE_DIR, "*.h")))
    exts = []
    for pyx in sorted(glob.glob(os.path.join("qpack", "_kernels", "*.pyx"))):
        name = os.path.splitext(pyx)[0].replace(os.sep, ".")
        exts.append(
            Extension(
                name,
                [pyx],
                include_dirs=[np.get_include(), KERNEL_DIR, INCLUDE_DIR],
                depends=headers + [os.path.join(KERNEL_DIR, "qk.pxd")],
                define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
            )
        )
    return cythonize(
        exts,
        compiler_directives={
            "language_level": "3",
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
        annotate=False,
        include_path=["."],
    )


setup(ext_modules=_extensions(), cmdclass={"build_ext": BuildExt})
