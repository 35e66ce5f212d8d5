// Plain CUDA copies, the reference for bench/hardware_vs_reference.py (our own code, built with
// nvcc on the GPU machine at run time). Prints one JSON line: device-to-device cudaMemcpy (bytes
// read plus written, as memory.py counts it) and pinned host<->device cudaMemcpyAsync, each the
// median of timed batches measured with CUDA events.
#include <cuda_runtime.h>
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#define CHECK(call)                                                                    \
  do {                                                                                 \
    cudaError_t err_ = (call);                                                         \
    if (err_ != cudaSuccess) {                                                         \
      std::printf("{\"error\": \"%s: %s\"}\n", #call, cudaGetErrorString(err_));      \
      std::exit(4);                                                                    \
    }                                                                                  \
  } while (0)

enum Kind { D2D, H2D, D2H };

static double median_gbps(Kind kind, void* dst, void* src, size_t bytes, size_t counted, int inner,
                          int batches) {
  cudaEvent_t start, stop;
  CHECK(cudaEventCreate(&start));
  CHECK(cudaEventCreate(&stop));
  cudaMemcpyKind dir = kind == D2D ? cudaMemcpyDeviceToDevice
                       : kind == H2D ? cudaMemcpyHostToDevice
                                     : cudaMemcpyDeviceToHost;
  for (int i = 0; i < inner; ++i) CHECK(cudaMemcpyAsync(dst, src, bytes, dir, 0));  // warm-up
  CHECK(cudaDeviceSynchronize());
  std::vector<double> rates;
  for (int b = 0; b < batches; ++b) {
    CHECK(cudaEventRecord(start, 0));
    for (int i = 0; i < inner; ++i) CHECK(cudaMemcpyAsync(dst, src, bytes, dir, 0));
    CHECK(cudaEventRecord(stop, 0));
    CHECK(cudaEventSynchronize(stop));
    float ms = 0.0f;
    CHECK(cudaEventElapsedTime(&ms, start, stop));
    rates.push_back(double(counted) * inner / (ms / 1000.0) / 1e9);
  }
  std::sort(rates.begin(), rates.end());
  CHECK(cudaEventDestroy(start));
  CHECK(cudaEventDestroy(stop));
  return rates[rates.size() / 2];
}

int main(int argc, char** argv) {
  int device = argc > 1 ? std::atoi(argv[1]) : 0;
  size_t d2d_bytes = argc > 2 ? std::strtoull(argv[2], nullptr, 10) : (size_t(1) << 30);
  size_t pcie_bytes = argc > 3 ? std::strtoull(argv[3], nullptr, 10) : (size_t(1) << 28);
  CHECK(cudaSetDevice(device));
  void *a, *b, *host;
  CHECK(cudaMalloc(&a, d2d_bytes));
  CHECK(cudaMalloc(&b, d2d_bytes));
  CHECK(cudaMemset(a, 1, d2d_bytes));
  CHECK(cudaMallocHost(&host, pcie_bytes));
  double d2d = median_gbps(D2D, b, a, d2d_bytes, 2 * d2d_bytes, 10, 5);
  double h2d = median_gbps(H2D, a, host, pcie_bytes, pcie_bytes, 4, 5);
  double d2h = median_gbps(D2H, host, a, pcie_bytes, pcie_bytes, 4, 5);
  std::printf("{\"d2d_gbps\": %.2f, \"h2d_gbps\": %.2f, \"d2h_gbps\": %.2f, \"d2d_bytes\": %zu, \"pcie_bytes\": %zu}\n",
              d2d, h2d, d2h, d2d_bytes, pcie_bytes);
  CHECK(cudaFreeHost(host));
  CHECK(cudaFree(a));
  CHECK(cudaFree(b));
  return 0;
}
