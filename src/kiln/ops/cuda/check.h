// Every CUDA call and every launch is checked; a failure throws kiln::Error naming the
// call, the file and line, and CUDA's own message.
#pragma once

#include <cuda_runtime.h>

#include "kiln/core/error.h"

#define KILN_CUDA_CHECK(expr)                                                                            \
  do {                                                                                                   \
    cudaError_t kiln_err_ = (expr);                                                                      \
    if (kiln_err_ != cudaSuccess)                                                                        \
      ::kiln::fail(::kiln::ErrorKind::IO, "CUDA error in {} at {}:{}: {} ({})", #expr, __FILE__, __LINE__, \
                   cudaGetErrorString(kiln_err_), static_cast<int>(kiln_err_));                          \
  } while (0)

#define KILN_CUDA_CHECK_LAUNCH() KILN_CUDA_CHECK(cudaGetLastError())
