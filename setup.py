"""Build the C++ extension pix2pix_fast._C (pybind11, C++17).

The extension takes and returns NumPy buffers only, so it does not link
against libtorch and survives any PyTorch upgrade. Its source files compile
in parallel: MAX_JOBS sets how many at once (default: every core).
"""
import glob
import sys

from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext
from setuptools import setup

extra_compile_args = ["-O3"]
extra_link_args = []
if sys.platform != "win32":
    extra_compile_args += ["-pthread", "-fvisibility=hidden"]
    extra_link_args += ["-pthread"]

ParallelCompile("MAX_JOBS", default=0).install()

ext_modules = [
    Pybind11Extension(
        "pix2pix_fast._C",
        sorted(glob.glob("csrc/*.cpp")),
        include_dirs=["csrc"],
        cxx_std=17,
        extra_compile_args=extra_compile_args,
        extra_link_args=extra_link_args,
    )
]

setup(ext_modules=ext_modules, cmdclass={"build_ext": build_ext})
