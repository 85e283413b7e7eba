#include "kiln/cli/serve.h"

#include <csignal>
#include <pthread.h>

#include <thread>

#include <fmt/format.h>

#include "kiln/cli/default_model.h"
#include "kiln/core/error.h"
#include "kiln/cli/backend_session.h"
#include "kiln/runtime/engine.h"
#include "kiln/server/http_server.h"
#include "kiln/tokenizer/tokenizer.h"

namespace kiln::cli {

namespace {

tokenizer::Tokenizer load_tokenizer(const ServeOptions& o, std::ostream& err) {
  const std::filesystem::path tok_path = o.tokenizer ? *o.tokenizer : o.model / "tokenizer.json";
  if (!std::filesystem::exists(tok_path)) {
    fail(ErrorKind::Usage, "{} not found: `kiln serve` needs the model's tokenizer (put tokenizer.json in the model "
                           "directory or pass --tokenizer)", tok_path.string());
  }
  err << "loading tokenizer " << tok_path.string() << "\n";
  return tokenizer::Tokenizer::from_file(tok_path);
}

// The drafter and default drafts per round (BackendSession's resolve_drafting). The
// checkpoint's DSpark drafter drafts by default on the CPU backend; on the CUDA backend
// (whose drafter has not yet been measured on a GPU) only with --spec dspark.
Drafting serve_drafting(const ServeOptions& o) {
  Drafting d = resolve_drafting(o.model, load_model_config(o.model), {o.spec, o.mtp, resolve_device(o.device) == "cpu", 0});
  if (o.spec != "off" && !d.k) d.k = 0;  // no drafts by default; requests may ask ('mtp')
  return d;
}

// Capacity: max_batch sequences, or as many as the GPU holds (model/gpu_memory.h); a pass
// holds every sequence's decode rows (with as many drafts as a request may ask for) and a
// prompt chunk.
SessionOptions session_options(const ServeOptions& o, const Drafting& d, std::ostream& err) {
  const bool drafter = d.dspark || (d.k && load_model_config(o.model).num_mtp_layers > 0);
  const int drafts = drafter ? d.most : 0;
  const int rows = static_cast<int>(std::min<int64_t>(int64_t{o.max_batch} * (1 + drafts) + o.prefill_chunk, 1 << 20));
  SessionOptions so{o.model, o.device, o.threads, o.max_batch, rows, o.max_context, &err};
  so.precision = o.precision;
  so.parallel = o.parallel;
  so.gpu_memory_fraction = o.gpu_memory_fraction;
  so.fewer_slots_ok = true;
  so.rows_per_slot = 1 + drafts;
  so.dspark = d.dspark;
  return so;
}

// The engine takes the sequences the backend holds (requests beyond wait, then get 429).
runtime::EngineOptions engine_options(const ServeOptions& o, const Drafting& d, int slots) {
  runtime::EngineOptions eo;
  eo.max_batch = slots;
  eo.max_waiting = o.max_waiting;
  eo.prefill_chunk = o.prefill_chunk;
  eo.mtp = d.k.value_or(0);
  eo.drafter = d.dspark ? DrafterKind::DSpark : DrafterKind::Mtp;
  eo.dspark_min_survival = o.dspark_min_survival;
  eo.sampled_drafts_by_argmax = sampled_drafts_by_argmax(o.sampled_drafts, resolve_device(o.device) == "cuda");
  return eo;
}

ServeOptions resolved(const ServeOptions& options) {
  ServeOptions o = options;
  o.model = model_or_default(o.model);
  if (o.port < 0 || o.port > 65535) fail(ErrorKind::Usage, "--port {}: expected 0..65535", o.port);
  return o;
}

}  // namespace

// Members in construction order; the server goes first on destruction (it stops its
// connections before the engine under them).
struct ServeInstance::Impl {
  ServeOptions o;
  Drafting drafting;
  tokenizer::Tokenizer tok;
  BackendSession session;
  runtime::Engine engine;
  server::ServerOptions so;
  std::unique_ptr<server::Server> srv;
  int port = -1;

  Impl(const ServeOptions& options, std::ostream& err)
      : o(resolved(options)), drafting(serve_drafting(o)), tok(load_tokenizer(o, err)),
        session(session_options(o, drafting, err)), engine(session.backend(), engine_options(o, drafting, session.slots())) {
    const auto& cfg = session.config();
    if (static_cast<int64_t>(tok.vocab_size()) > cfg.vocab_size) {
      fail_invalid("{}: the tokenizer has {} ids but the model's vocabulary is {}",
                   (o.tokenizer ? *o.tokenizer : o.model / "tokenizer.json").string(), tok.vocab_size(), cfg.vocab_size);
    }
    so.host = o.host;
    so.port = o.port;
    so.api_key = o.api_key;
    so.model_name = o.served_model_name.empty() ? std::filesystem::absolute(o.model).lexically_normal().filename().string()
                                                : o.served_model_name;
    if (so.model_name.empty()) so.model_name = std::filesystem::absolute(o.model).lexically_normal().parent_path().filename().string();
    so.max_context = session.backend().max_context();
    so.vocab_size = cfg.vocab_size;
    so.http_threads = o.http_threads;
    so.max_body_bytes = o.max_body_bytes;
    so.idle_timeout = std::chrono::seconds(o.idle_timeout_s);
    so.drafting = drafting.k.has_value();
    server::ModelTokens mt{static_cast<int32_t>(cfg.bos_token_id), static_cast<int32_t>(cfg.eos_token_id)};
    srv = std::make_unique<server::Server>(engine, tok, mt, so);
    port = srv->bind();
  }
};

ServeInstance::ServeInstance(const ServeOptions& o, std::ostream& err) : impl_(std::make_unique<Impl>(o, err)) {}
ServeInstance::~ServeInstance() = default;

int ServeInstance::port() const { return impl_->port; }
std::string ServeInstance::url() const { return fmt::format("http://{}:{}", impl_->o.host, impl_->port); }
void ServeInstance::run() { impl_->srv->run(); }
void ServeInstance::stop() { impl_->srv->stop(); }

namespace {

// "; DSpark 5 drafts per round (block 5)", "; MTP 2", "; MTP on request", "" (no drafter
// or --spec off), or that the checkpoint's DSpark drafter does not run here (CUDA without
// --spec dspark).
std::string drafting_part(const Drafting& d, const ModelConfig& c) {
  if (d.dspark) return fmt::format("; DSpark {} drafts per round (block {})", *d.k, d.most);
  std::string s;
  if (d.k && c.num_mtp_layers > 0) s = *d.k > 0 ? fmt::format("; MTP {}", *d.k) : "; MTP on request";
  if (c.dspark && d.k) s += "; DSpark drafter not run (on --device cuda: --spec dspark runs it)";
  return s;
}

}  // namespace

std::string ServeInstance::ready_line() const {
  const Impl& i = *impl_;
  return fmt::format("kiln: serving '{}' at {} (OpenAI API under /v1; context {} tokens; batch {}{}{}{}; {})",
                     i.so.model_name, url(), i.so.max_context, i.session.slots(),
                     i.session.slots_lowered() ? fmt::format(" (--max-batch {} does not fit the GPU)", i.o.max_batch) : "",
                     drafting_part(i.drafting, i.session.config()),
                     i.o.api_key.empty() ? "" : "; API key required", i.session.describe());
}

int run_serve(const ServeOptions& o, std::ostream& out, std::ostream& err) {
  resolved(o);  // a bad --port fails before anything loads
  // SIGINT / SIGTERM are taken by a waiting thread (blocked here, before any thread starts,
  // so every thread inherits the mask); a write to a closed socket must not kill us.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
  std::signal(SIGPIPE, SIG_IGN);

  ServeInstance instance(o, err);
  std::thread waiter([&instance, sigs] {
    int sig = 0;
    sigwait(&sigs, &sig);
    instance.stop();
  });
  waiter.detach();
  out << instance.ready_line() << "\n" << std::flush;
  instance.run();
  err << "kiln: server stopped\n";
  return 0;
}

}  // namespace kiln::cli
