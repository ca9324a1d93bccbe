// pix2pix_fast._C: native helpers for pix2pix-fast.
//
// The module works on NumPy buffers only (no libtorch), so it is independent
// of the installed PyTorch build. Submodules register themselves here.
#include <pybind11/pybind11.h>

#include <thread>

namespace py = pybind11;

namespace p2p {
void register_loader(py::module_& m);  // loader.cpp: _C.loader
}  // namespace p2p

PYBIND11_MODULE(_C, m) {
  m.doc() = "pix2pix-fast native extension";
  m.def(
      "hardware_threads",
      []() {
        unsigned n = std::thread::hardware_concurrency();
        return n == 0 ? 1u : n;
      },
      "Number of hardware threads the native loader may use.");
  p2p::register_loader(m);
}
