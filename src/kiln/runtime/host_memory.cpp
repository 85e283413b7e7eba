#include "kiln/runtime/host_memory.h"

#include <fstream>
#include <sstream>

namespace kiln::runtime {

HostMemory parse_host_memory(const std::string& status) {
  HostMemory m;
  std::istringstream in(status);
  std::string line;
  auto value = [](const std::string& l) {
    const size_t colon = l.find(':');
    return colon == std::string::npos ? int64_t{-1} : static_cast<int64_t>(std::stoll(l.substr(colon + 1))) * 1024;
  };
  while (std::getline(in, line)) {
    if (line.rfind("RssAnon:", 0) == 0) m.rss_anon = value(line);
    else if (line.rfind("VmRSS:", 0) == 0) m.vm_rss = value(line);
    else if (line.rfind("VmHWM:", 0) == 0) m.vm_hwm = value(line);
  }
  return m;
}

HostMemory read_host_memory() {
  std::ifstream f("/proc/self/status");
  if (!f) return {};
  std::stringstream ss;
  ss << f.rdbuf();
  return parse_host_memory(ss.str());
}

PeakAnonSampler::PeakAnonSampler(std::chrono::milliseconds period) : period_(period) {
  sample();
  thread_ = std::thread([this] {
    while (!stop_.load()) {
      std::this_thread::sleep_for(period_);
      sample();
    }
  });
}

PeakAnonSampler::~PeakAnonSampler() { stop(); }

void PeakAnonSampler::stop() {
  stop_ = true;
  if (thread_.joinable()) {
    thread_.join();
    sample();
  }
}

void PeakAnonSampler::sample() {
  const int64_t v = read_host_memory().rss_anon;
  int64_t cur = peak_.load();
  while (v > cur && !peak_.compare_exchange_weak(cur, v)) {
  }
}

}  // namespace kiln::runtime
