#include "kiln/server/metrics_text.h"

#include <fmt/format.h>

namespace kiln::server {

void HttpCounters::count(int status) {
  size_t i = 0;
  while (i < kStatuses.size() && kStatuses[i] != status) ++i;
  ++by_status[i];
}

namespace {

void metric(std::string& out, const char* name, const char* type, const char* help, double value) {
  out += fmt::format("# HELP {} {}\n# TYPE {} {}\n{} {}\n", name, help, name, type, name, value);
}

void histogram(std::string& out, const char* name, const char* help, const runtime::Histogram& h) {
  const auto s = h.snapshot();
  out += fmt::format("# HELP {} {}\n# TYPE {} histogram\n", name, help, name);
  for (size_t i = 0; i < s.bounds.size(); ++i) out += fmt::format("{}_bucket{{le=\"{}\"}} {}\n", name, s.bounds[i], s.cumulative[i]);
  out += fmt::format("{}_bucket{{le=\"+Inf\"}} {}\n{}_sum {}\n{}_count {}\n", name, s.count, name, s.sum, name, s.count);
}

}  // namespace

std::string render_metrics(const runtime::EngineMetrics& m, const HttpCounters& http, int64_t open_requests) {
  std::string out;
  metric(out, "kiln_requests_total", "counter", "Generation requests accepted into the queue.",
         static_cast<double>(m.requests_total.load()));
  metric(out, "kiln_requests_finished_total", "counter", "Requests that ended by length or stop.",
         static_cast<double>(m.requests_finished.load()));
  metric(out, "kiln_requests_cancelled_total", "counter", "Requests cancelled (client gone, stop string, shutdown).",
         static_cast<double>(m.requests_cancelled.load()));
  metric(out, "kiln_requests_rejected_total", "counter", "Requests refused because the queue was full (429).",
         static_cast<double>(m.requests_rejected.load()));
  metric(out, "kiln_requests_failed_total", "counter", "Requests that failed inside the engine.",
         static_cast<double>(m.requests_failed.load()));
  metric(out, "kiln_prompt_tokens_total", "counter", "Prompt tokens prefilled.", static_cast<double>(m.prompt_tokens.load()));
  metric(out, "kiln_generation_tokens_total", "counter", "Tokens generated.", static_cast<double>(m.generated_tokens.load()));
  metric(out, "kiln_queue_depth", "gauge", "Requests waiting to join the running batch.", static_cast<double>(m.waiting.load()));
  metric(out, "kiln_running_sequences", "gauge", "Sequences in the running batch.", static_cast<double>(m.running.load()));
  metric(out, "kiln_open_requests", "gauge", "Generation requests with an open HTTP response.", static_cast<double>(open_requests));
  metric(out, "kiln_engine_steps_total", "counter", "Scheduler steps run.", static_cast<double>(m.steps.load()));
  out += "# HELP kiln_engine_step_seconds_total Host wall time of scheduler steps, by phase (draft, main pass, drafter catch-up, other).\n"
         "# TYPE kiln_engine_step_seconds_total counter\n";
  for (size_t i = 0; i < m.step_ns.size(); ++i)
    out += fmt::format("kiln_engine_step_seconds_total{{phase=\"{}\"}} {}\n", runtime::EngineMetrics::kPhaseNames[i],
                       static_cast<double>(m.step_ns[i].load()) * 1e-9);
  histogram(out, "kiln_time_to_first_token_seconds", "Time from queueing to the first generated token.", m.ttft);
  histogram(out, "kiln_time_per_output_token_seconds", "Time between consecutive generated tokens of a request.", m.tpot);
  out += "# HELP kiln_mtp_draft_tokens_total Draft tokens proposed (MTP or DSpark), by draft position.\n"
         "# TYPE kiln_mtp_draft_tokens_total counter\n";
  for (size_t i = 0; i < m.mtp_proposed.size(); ++i)
    out += fmt::format("kiln_mtp_draft_tokens_total{{position=\"{}\"}} {}\n", i, m.mtp_proposed[i].load());
  out += "# HELP kiln_mtp_accepted_tokens_total Draft tokens accepted (MTP or DSpark), by draft position.\n"
         "# TYPE kiln_mtp_accepted_tokens_total counter\n";
  for (size_t i = 0; i < m.mtp_accepted.size(); ++i)
    out += fmt::format("kiln_mtp_accepted_tokens_total{{position=\"{}\"}} {}\n", i, m.mtp_accepted[i].load());
  out += "# HELP kiln_http_responses_total HTTP responses by status.\n# TYPE kiln_http_responses_total counter\n";
  for (size_t i = 0; i < HttpCounters::kStatuses.size(); ++i)
    out += fmt::format("kiln_http_responses_total{{status=\"{}\"}} {}\n", HttpCounters::kStatuses[i], http.by_status[i].load());
  out += fmt::format("kiln_http_responses_total{{status=\"other\"}} {}\n", http.by_status.back().load());
  return out;
}

}  // namespace kiln::server
