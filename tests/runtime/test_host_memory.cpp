// /proc/self/status as the load statistics read it, and the RssAnon peak sampler.
#include <gtest/gtest.h>

#include <thread>
#include <vector>

#include "kiln/runtime/host_memory.h"

namespace kiln::runtime {
namespace {

TEST(HostMemory, ParsesStatusKilobytes) {
  const HostMemory m = parse_host_memory(
      "Name:\tkiln\nVmPeak:\t 9000 kB\nVmHWM:\t    2048 kB\nVmRSS:\t    1024 kB\nRssAnon:\t     512 kB\n"
      "RssFile:\t     500 kB\n");
  EXPECT_EQ(m.vm_hwm, 2048 * 1024);
  EXPECT_EQ(m.vm_rss, 1024 * 1024);
  EXPECT_EQ(m.rss_anon, 512 * 1024);
  EXPECT_EQ(parse_host_memory("Name:\tx\n").rss_anon, -1);
}

TEST(HostMemory, SamplerSeesAnAllocationThatIsGoneAgain) {
  const HostMemory now = read_host_memory();
  ASSERT_GT(now.rss_anon, 0);
  ASSERT_GE(now.vm_hwm, now.vm_rss);
  PeakAnonSampler s(std::chrono::milliseconds(1));
  {
    std::vector<char> big(size_t{256} << 20, 1);  // touched: resident and anonymous
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    EXPECT_EQ(big[12345], 1);
  }
  s.stop();
  EXPECT_GE(s.peak(), now.rss_anon + (int64_t{200} << 20));
}

}  // namespace
}  // namespace kiln::runtime
