// pix2pix_fast._C.loader: the native paired-image loader.
//
// Python (pix2pix_fast/data/loader.py) decodes every image once into a uint8
// cache (in memory or a memory-mapped file, pix2pix_fast/data/cache.py) and
// hands it over as a Store: buffers + an index of (buffer, offset, h, w, c)
// per image, A of pair i at 2i and B at 2i + 1, each image stored planar
// (C, H, W) so that the kernels read contiguous rows of one channel. A Pipeline owns worker
// threads that never touch Python (no GIL): Python allocates each batch's
// output tensors (pinned when CUDA is present), submits them with the batch's
// sample indices, and later waits for that batch; the workers render the
// samples straight into those buffers. Python submits several batches ahead,
// so the rendering of batch b + 1 .. b + depth overlaps the training on b.
//
// A sample's crop and flip come from (seed, epoch, index) alone (transform.h),
// so batches are identical whatever the thread count. A worker that fails
// (std::exception) records the message on its batch; `wait` raises it in
// Python as RuntimeError. `close` (also run by the destructor) drops queued
// work, lets running samples finish and joins the threads; it never needs
// the GIL from the workers, so it cannot deadlock. Rule: mu_ is never held
// while a Python object is released (that may release the GIL).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "resample.h"
#include "transform.h"

namespace py = pybind11;

namespace p2p {
namespace {

struct Image {
  const uint8_t* data;  // (c, h, w), C-contiguous
  int h, w, c;
};

// Decoded images, read-only. Keeps the Python buffers it points into alive.
class Store {
 public:
  Store(const py::list& bases, py::array_t<int64_t, py::array::c_style | py::array::forcecast> index)
      : bases_(bases) {
    std::vector<std::pair<const uint8_t*, size_t>> spans;
    for (const py::handle& b : bases) {
      py::buffer_info info = py::reinterpret_borrow<py::buffer>(b).request();
      if (info.itemsize != 1) throw std::invalid_argument("Store: buffers must hold bytes (uint8)");
      ssize_t expect = 1;
      for (ssize_t d = info.ndim - 1; d >= 0; --d) {
        if (info.shape[d] > 1 && info.strides[d] != expect)
          throw std::invalid_argument("Store: buffers must be C-contiguous");
        expect *= info.shape[d];
      }
      spans.emplace_back(static_cast<const uint8_t*>(info.ptr), static_cast<size_t>(info.size));
    }
    if (index.ndim() != 2 || index.shape(1) != 5 || index.shape(0) % 2 != 0)
      throw std::invalid_argument("Store: index must be (2 * pairs, 5) int64 of (buffer, offset, h, w, c)");
    auto r = index.unchecked<2>();
    for (ssize_t i = 0; i < index.shape(0); ++i) {
      const int64_t base = r(i, 0), off = r(i, 1), h = r(i, 2), w = r(i, 3), c = r(i, 4);
      if (base < 0 || base >= static_cast<int64_t>(spans.size()) || off < 0 || h <= 0 || w <= 0 || c <= 0 ||
          h > (1 << 24) || w > (1 << 24) || c > 4096)
        throw std::invalid_argument("Store: bad index row " + std::to_string(i));
      const uint64_t bytes = static_cast<uint64_t>(h) * w * c;
      if (static_cast<uint64_t>(off) + bytes > spans[base].second)
        throw std::invalid_argument("Store: image " + std::to_string(i) + " runs past the end of its buffer");
      images_.push_back({spans[base].first + off, static_cast<int>(h), static_cast<int>(w), static_cast<int>(c)});
    }
  }
  size_t pairs() const { return images_.size() / 2; }
  const Image& image(size_t i) const { return images_[i]; }
  const std::vector<Image>& images() const { return images_; }

 private:
  py::list bases_;  // keep-alive
  std::vector<Image> images_;
};

struct Options {
  int load_h, load_w, crop_h, crop_w;
  Preprocess mode;
  bool flip;
  uint64_t seed;
};

// Coefficient tables for every (input size -> resized size) the store needs.
class Tables {
 public:
  void add(int in, int out) {
    auto key = std::make_pair(in, out);
    if (!axes_.count(key)) axes_.emplace(key, make_axis(in, out));
  }
  const Axis& get(int in, int out) const {
    auto it = axes_.find(std::make_pair(in, out));
    if (it == axes_.end()) throw std::logic_error("no resampling table for this size");
    return it->second;
  }

 private:
  std::map<std::pair<int, int>, Axis> axes_;
};

struct Batch {
  int64_t epoch = 0;
  std::vector<int64_t> indices;
  uint8_t* a = nullptr;  // (n, Ca, H, W)
  uint8_t* b = nullptr;  // (n, Cb, H, W)
  int ca = 0, cb = 0, h = 0, w = 0;
  int remaining = 0;
  bool claimed = false;  // a wait() has started on this batch
  std::string error;
  py::object keep_a, keep_b;  // created and destroyed only with the GIL held
};

struct OutBuffer {
  uint8_t* ptr;
  int n, c, h, w;
};

OutBuffer writable_nchw(const py::buffer& buf, const char* what) {
  py::buffer_info info = buf.request(true);
  if (info.itemsize != 1 || info.ndim != 4)
    throw std::invalid_argument(std::string(what) + ": expected a writable (N, C, H, W) uint8 buffer");
  ssize_t expect = 1;
  for (ssize_t d = 3; d >= 0; --d) {
    if (info.shape[d] > 1 && info.strides[d] != expect)
      throw std::invalid_argument(std::string(what) + ": buffer must be C-contiguous");
    expect *= info.shape[d];
  }
  return {static_cast<uint8_t*>(info.ptr), static_cast<int>(info.shape[0]), static_cast<int>(info.shape[1]),
          static_cast<int>(info.shape[2]), static_cast<int>(info.shape[3])};
}

class Pipeline {
 public:
  // load_h / crop_h: 0 = load_size / crop_size (square).
  Pipeline(std::shared_ptr<Store> store, int load_size, int crop_size, const std::string& preprocess, bool flip,
           uint64_t seed, int threads, int load_h, int crop_h)
      : store_(std::move(store)),
        opt_{load_h ? load_h : load_size, load_size, crop_h ? crop_h : crop_size, crop_size,
             parse_preprocess(preprocess), flip, seed} {
    if (opt_.load_h <= 0 || opt_.load_w <= 0 || opt_.crop_h <= 0 || opt_.crop_w <= 0)
      throw std::invalid_argument("load_size and crop_size must be positive");
    if (threads <= 0) throw std::invalid_argument("threads must be positive");
    std::map<std::pair<int, int>, bool> seen;
    for (const Image& im : store_->images()) {
      if (!seen.emplace(std::make_pair(im.h, im.w), true).second) continue;
      try {
        Geometry g = geometry(im.h, im.w, opt_.load_h, opt_.load_w, opt_.crop_h, opt_.crop_w, opt_.mode);
        tables_.add(im.h, g.resize_h);
        tables_.add(im.w, g.resize_w);
      } catch (const std::invalid_argument&) {
        // An image this mode cannot use: its samples fail (with the reason) when rendered.
      }
    }
    for (int t = 0; t < threads; ++t) workers_.emplace_back([this] { work(); });
  }

  ~Pipeline() { close(); }

  int threads() const { return static_cast<int>(workers_.size()); }

  void submit(int64_t id, int64_t epoch, py::array_t<int64_t, py::array::c_style | py::array::forcecast> indices,
              const py::buffer& a, const py::buffer& b) {
    OutBuffer oa = writable_nchw(a, "A"), ob = writable_nchw(b, "B");
    const ssize_t n = indices.size();
    if (n <= 0 || oa.n != n || ob.n != n || oa.h != ob.h || oa.w != ob.w)
      throw std::invalid_argument("submit: A and B must be (len(indices), C, H, W) with the same H, W");
    auto batch = std::make_unique<Batch>();
    batch->epoch = epoch;
    batch->indices.assign(indices.data(), indices.data() + n);
    for (int64_t i : batch->indices)
      if (i < 0 || static_cast<size_t>(i) >= store_->pairs())
        throw std::out_of_range("submit: sample index " + std::to_string(i) + " out of range");
    batch->a = oa.ptr;
    batch->b = ob.ptr;
    batch->ca = oa.c;
    batch->cb = ob.c;
    batch->h = oa.h;
    batch->w = oa.w;
    batch->remaining = static_cast<int>(n);
    batch->keep_a = a;
    batch->keep_b = b;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (closed_) throw std::runtime_error("submit: the pipeline is closed");
      if (batches_.count(id)) throw std::invalid_argument("submit: batch id " + std::to_string(id) + " is in use");
      Batch* p = batch.get();
      batches_.emplace(id, std::move(batch));
      for (ssize_t j = 0; j < n; ++j) queue_.emplace_back(p, static_cast<int>(j));
    }
    work_cv_.notify_all();
  }

  // Block (without the GIL) until batch `id` is rendered; raise its error if any.
  void wait(int64_t id) {
    Batch* p = nullptr;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = batches_.find(id);
      if (it == batches_.end()) throw py::key_error("wait: no batch " + std::to_string(id) + " was submitted");
      p = it->second.get();
      if (p->claimed) throw py::key_error("wait: batch " + std::to_string(id) + " is already being waited for");
      p->claimed = true;  // one waiter per batch: only it (or close) frees the batch
    }
    bool closed;
    {
      py::gil_scoped_release nogil;
      std::unique_lock<std::mutex> lock(mu_);
      // closed_ first: once it is set, close() may free the batch.
      done_cv_.wait(lock, [&] { return closed_ || p->remaining == 0; });
      closed = closed_;
    }
    if (closed) throw std::runtime_error("wait: the pipeline was closed");
    std::string error;
    std::unique_ptr<Batch> owned;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = batches_.find(id);
      if (it == batches_.end()) throw std::runtime_error("wait: the pipeline was closed");  // close() in between
      error = std::move(it->second->error);
      owned = std::move(it->second);
      batches_.erase(it);
    }
    owned.reset();  // drops the buffer references, with the GIL held
    if (!error.empty()) throw std::runtime_error(error);
  }

  // Drop queued samples, finish running ones, join the threads. Idempotent.
  // Called with the GIL held; the workers never take it, so joining is safe.
  void close() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (closed_ && workers_.empty()) return;
      closed_ = true;
      queue_.clear();
    }
    work_cv_.notify_all();
    done_cv_.notify_all();
    for (std::thread& t : workers_) t.join();
    workers_.clear();
    std::unordered_map<int64_t, std::unique_ptr<Batch>> dropped;
    {
      std::lock_guard<std::mutex> lock(mu_);  // a waiter in another thread may be looking
      dropped.swap(batches_);
    }
    // Drop the buffer references with the GIL but *without* mu_: freeing a
    // torch tensor can release the GIL, and a thread holding the GIL may be
    // waiting for mu_ (a deadlock the stress test found).
    dropped.clear();
  }

  // Render one sample on the calling thread (benchmarks, tests).
  void render_one(int64_t epoch, int64_t index, const py::buffer& a, const py::buffer& b) {
    OutBuffer oa = writable_nchw(a, "A"), ob = writable_nchw(b, "B");
    if (oa.n != 1 || ob.n != 1) throw std::invalid_argument("render_one: buffers must be (1, C, H, W)");
    if (index < 0 || static_cast<size_t>(index) >= store_->pairs())
      throw std::out_of_range("render_one: sample index out of range");
    Batch batch;
    batch.epoch = epoch;
    batch.indices = {index};
    batch.a = oa.ptr;
    batch.b = ob.ptr;
    batch.ca = oa.c;
    batch.cb = ob.c;
    batch.h = oa.h;
    batch.w = oa.w;
    py::gil_scoped_release nogil;
    Scratch scratch;
    render_sample(batch, 0, scratch);
  }

 private:
  void work() {
    Scratch scratch;
    for (;;) {
      Batch* batch;
      int j;
      {
        std::unique_lock<std::mutex> lock(mu_);
        work_cv_.wait(lock, [&] { return closed_ || !queue_.empty(); });
        if (closed_) return;
        batch = queue_.front().first;
        j = queue_.front().second;
        queue_.pop_front();
      }
      std::string error;
      try {
        render_sample(*batch, j, scratch);
      } catch (const std::exception& e) {
        error = e.what();
        if (error.empty()) error = "unknown error";
      } catch (...) {
        error = "unknown error";
      }
      bool last;
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (!error.empty() && batch->error.empty())
          batch->error = "sample " + std::to_string(batch->indices[j]) + ": " + error;
        last = --batch->remaining == 0;
      }
      if (last) done_cv_.notify_all();
    }
  }

  void render_sample(const Batch& batch, int j, Scratch& scratch) const {
    const int64_t index = batch.indices[j];
    const Image& ia = store_->image(2 * index);
    const Image& ib = store_->image(2 * index + 1);
    Params p = sample_params(opt_.seed, static_cast<uint64_t>(batch.epoch), static_cast<uint64_t>(index), ia.h, ia.w,
                             opt_.load_h, opt_.load_w, opt_.crop_h, opt_.crop_w, opt_.mode, opt_.flip);
    if (p.crop_h != batch.h || p.crop_w != batch.w)
      throw std::invalid_argument("output " + std::to_string(p.crop_h) + "x" + std::to_string(p.crop_w) +
                                  " does not match the batch's " + std::to_string(batch.h) + "x" +
                                  std::to_string(batch.w));
    const Window win{p.crop_y, p.crop_x, p.crop_h, p.crop_w, p.flip};
    const size_t pixels = static_cast<size_t>(batch.h) * batch.w;
    const struct {
      const Image& im;
      uint8_t* out;
      int c;
      const char* name;
    } jobs[2] = {{ia, batch.a + static_cast<size_t>(j) * batch.ca * pixels, batch.ca, "A"},
                 {ib, batch.b + static_cast<size_t>(j) * batch.cb * pixels, batch.cb, "B"}};
    for (const auto& job : jobs) {
      if (job.im.c != job.c)
        throw std::invalid_argument(std::string(job.name) + " has " + std::to_string(job.im.c) +
                                    " channels, the batch " + std::to_string(job.c));
      Geometry g = geometry(job.im.h, job.im.w, opt_.load_h, opt_.load_w, opt_.crop_h, opt_.crop_w, opt_.mode);
      if (g.resize_h != p.resize_h || g.resize_w != p.resize_w)
        throw std::invalid_argument("A and B resize to different sizes");
      render(job.im.data, job.im.c, tables_.get(job.im.h, p.resize_h), tables_.get(job.im.w, p.resize_w), win,
             job.out, scratch);
    }
  }

  std::shared_ptr<Store> store_;
  Options opt_;
  Tables tables_;
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable work_cv_, done_cv_;
  std::deque<std::pair<Batch*, int>> queue_;
  std::unordered_map<int64_t, std::unique_ptr<Batch>> batches_;
  bool closed_ = false;
};

// Apply explicit params to one HWC image -> (C, crop_h, crop_w); the twin of
// transforms.apply (which returns HWC), for the tests.
py::array_t<uint8_t> apply_params(py::array_t<uint8_t, py::array::c_style | py::array::forcecast> img, int resize_h,
                                  int resize_w, int crop_y, int crop_x, int crop_h, int crop_w, bool flip) {
  if (img.ndim() != 3) throw std::invalid_argument("apply: image must be (H, W, C) uint8");
  const int h = static_cast<int>(img.shape(0)), w = static_cast<int>(img.shape(1)), c = static_cast<int>(img.shape(2));
  Axis ay = make_axis(h, resize_h), ax = make_axis(w, resize_w);
  py::array_t<uint8_t> out({c, crop_h, crop_w});
  const Window win{crop_y, crop_x, crop_h, crop_w, flip};
  uint8_t* dst = out.mutable_data();
  const uint8_t* src = img.data();
  {
    py::gil_scoped_release nogil;
    std::vector<uint8_t> planar(static_cast<size_t>(h) * w * c);  // HWC -> CHW, as the cache stores it
    const size_t plane = static_cast<size_t>(h) * w;
    for (size_t i = 0; i < plane; ++i)
      for (int k = 0; k < c; ++k) planar[k * plane + i] = src[i * c + k];
    Scratch scratch;
    render(planar.data(), c, ay, ax, win, dst, scratch);
  }
  return out;
}

}  // namespace

void register_loader(py::module_& parent) {
  py::module_ m = parent.def_submodule(
      "loader", "Native paired-image loader: fused resize/crop/flip, worker threads without the GIL.");

  m.def("kernel_isa", &kernel_isa, "Instruction set of the resampling kernels in use: 'avx2' or 'baseline'.");
  m.def("set_avx2_enabled", &set_avx2_enabled, py::arg("enabled"),
        "Allow (default) or forbid the AVX2 kernels; the baseline ones are then used (tests, comparisons).");
  m.def("mix64", &mix64, py::arg("z"), "splitmix64 finaliser of z + 0x9E3779B97F4A7C15 (mod 2^64).");
  m.def(
      "sample_params",
      [](uint64_t seed, uint64_t epoch, uint64_t index, int in_h, int in_w, int load_size, int crop_size,
         const std::string& preprocess, bool flip, int load_h, int crop_h) {
        Params p = sample_params(seed, epoch, index, in_h, in_w, load_h ? load_h : load_size, load_size,
                                 crop_h ? crop_h : crop_size, crop_size, parse_preprocess(preprocess), flip);
        return py::make_tuple(p.resize_h, p.resize_w, p.crop_y, p.crop_x, p.crop_h, p.crop_w, p.flip);
      },
      py::arg("seed"), py::arg("epoch"), py::arg("index"), py::arg("in_h"), py::arg("in_w"), py::arg("load_size"),
      py::arg("crop_size"), py::arg("preprocess"), py::arg("flip"), py::arg("load_h") = 0, py::arg("crop_h") = 0,
      "(resize_h, resize_w, crop_y, crop_x, crop_h, crop_w, flip) of one sample; seed taken mod 2^64. load_size "
      "and crop_size are widths when load_h / crop_h (heights) are given; 0 = square.");
  m.def("apply", &apply_params, py::arg("img"), py::arg("resize_h"), py::arg("resize_w"), py::arg("crop_y"),
        py::arg("crop_x"), py::arg("crop_h"), py::arg("crop_w"), py::arg("flip"),
        "Resize (bicubic, Pillow's coefficients) + crop + flip of one (H, W, C) uint8 image -> (C, h, w).");

  py::class_<Store, std::shared_ptr<Store>>(m, "Store")
      .def(py::init<const py::list&, py::array_t<int64_t, py::array::c_style | py::array::forcecast>>(),
           py::arg("bases"), py::arg("index"))
      .def("__len__", &Store::pairs);

  py::class_<Pipeline>(m, "Pipeline")
      .def(py::init<std::shared_ptr<Store>, int, int, const std::string&, bool, uint64_t, int, int, int>(),
           py::arg("store"), py::arg("load_size"), py::arg("crop_size"), py::arg("preprocess"), py::arg("flip"),
           py::arg("seed"), py::arg("threads"), py::arg("load_h") = 0, py::arg("crop_h") = 0)
      .def_property_readonly("threads", &Pipeline::threads)
      .def("submit", &Pipeline::submit, py::arg("id"), py::arg("epoch"), py::arg("indices"), py::arg("a"),
           py::arg("b"), "Queue a batch: render samples `indices` into a (n, Ca, H, W) and b (n, Cb, H, W).")
      .def("wait", &Pipeline::wait, py::arg("id"),
           "Wait (GIL released) until batch `id` is rendered; raises RuntimeError with a worker's message.")
      .def("close", &Pipeline::close, "Drop queued work and join the worker threads (idempotent).")
      .def("render_one", &Pipeline::render_one, py::arg("epoch"), py::arg("index"), py::arg("a"), py::arg("b"),
           "Render one sample on the calling thread into (1, C, H, W) buffers.");
}

}  // namespace p2p
