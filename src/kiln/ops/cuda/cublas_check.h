// Every cuBLASLt call is checked like every CUDA call (check.h): a failure throws
// kiln::Error naming the call, the file and line, and cuBLASLt's own status.
#pragma once

#include <cublasLt.h>

#include "kiln/core/error.h"

#define KILN_CUBLAS_CHECK(expr)                                                                                 \
  do {                                                                                                          \
    const cublasStatus_t kiln_st_ = (expr);                                                                     \
    if (kiln_st_ != CUBLAS_STATUS_SUCCESS)                                                                      \
      ::kiln::fail(::kiln::ErrorKind::IO, "cuBLASLt error in {} at {}:{}: {} ({})", #expr, __FILE__, __LINE__, \
                   cublasLtGetStatusString(kiln_st_), static_cast<int>(kiln_st_));                              \
  } while (0)
