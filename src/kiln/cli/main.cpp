// kiln — serves DeepSeek-V4-class models from the artifacts people publish.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <iostream>
#include <string_view>

#include "kiln/cli/default_model.h"
#include "kiln/cli/inspect.h"
#include "kiln/cli/bench.h"
#include "kiln/cli/bench_serve.h"
#include "kiln/cli/perplexity.h"
#include "kiln/cli/quantize.h"
#include "kiln/cli/run_commands.h"
#include "kiln/cli/serve.h"
#include "kiln/cli/write_synthetic.h"
#include "kiln/cli/tokenize.h"
#include "kiln/core/error.h"

namespace {

constexpr const char* kPrecisionHelp =
    "auto (exact for now), exact (fp32 activations, the reference) or deepseek (DeepSeek's "
    "inference numerics: bf16 activations, FP8 1x128 activation quantization before FP8/FP4 linears)";
constexpr const char* kSampledDraftsHelp =
    "Speculative decoding at temperature > 0: argmax (drafts are the drafter's argmax, verified as point masses; "
    "on the GPU the draft chain stays on the device), draw (drafts drawn from the drafter's sampling distribution, "
    "one host choice per draft) or auto (argmax on cuda, draw on cpu); exact either way";
constexpr const char* kPrecisionModelHelp = "--model: activation precision: auto, exact or deepseek";

// --tensor-parallel N and --expert-parallel (model/tensor_parallel.h) on a command that loads a model.
void add_parallel_options(CLI::App* c, kiln::model::ParallelLayout& p, const char* prefix = "") {
  c->add_option("--tensor-parallel", p.world,
                fmt::format("{}Split the model over N tensor-parallel ranks as DeepSeek's inference code does (CPU "
                            "backend: N threads of this process; heads, shared expert, vocabulary split)", prefix))
      ->capture_default_str();
  c->add_flag("--expert-parallel", p.expert_parallel,
              fmt::format("{}With --tensor-parallel: routed experts held whole, sharded by id (else each split along "
                          "its intermediate dimension)", prefix));
}


// Runs a command, mapping kiln::Error to its exit code.
template <typename F>
int guarded(F&& run) {
  try {
    return run();
  } catch (const kiln::Error& e) {
    std::cerr << "kiln: error: " << e.what() << "\n";
    return e.exit_code();
  } catch (const std::exception& e) {
    std::cerr << "kiln: internal error: " << e.what() << "\n";
    return 1;
  }
}

// `kiln bench --serve ...`: the HTTP load generator. Its options are not the CUDA bench's
// (and it is built without CUDA too), so it parses its own command line.
int bench_serve_main(int argc, char** argv) {
  CLI::App app{"kiln bench --serve: load generator for an OpenAI-compatible server. N concurrent streams of "
               "/v1/completions with random token-id prompts; per concurrency level: output tok/s, TTFT and TPOT "
               "p50/p99 (docs/performance.md)"};
  app.name("kiln bench");
  kiln::cli::BenchServeOptions o;
  app.add_flag("--serve")->description("This load generator (required)")->required();
  auto* url = app.add_option("--url", o.url, "A running server, http://host:port (kiln, vLLM, llama.cpp, ...)");
  auto* model = app.add_option("--model", o.model, "Or: start `kiln serve` on this checkpoint in this process, on a free "
                                                   "loopback port");
  url->excludes(model);
  app.add_option("--concurrency", o.concurrency, "Concurrent streams, comma-separated: one measurement per value")
      ->capture_default_str();
  app.add_option("--prompt-tokens", o.prompt_tokens, "Prompt length: random token ids")->capture_default_str();
  app.add_option("--output-tokens", o.output_tokens, "Tokens each stream generates (max_tokens with ignore_eos)")
      ->capture_default_str();
  app.add_option("--requests", o.requests, "Requests per level (0 = 2 x the concurrency; never fewer than it)")
      ->capture_default_str();
  app.add_option("--vocab", o.vocab, "Prompt ids are drawn from [0, N) (0 = the vocab_size /v1/models reports)")
      ->capture_default_str();
  app.add_option("--seed", o.seed, "Seed of the prompts")->capture_default_str();
  app.add_option("--warmup", o.warmup, "Requests sent before the first level, not measured")->capture_default_str();
  app.add_option("--api-key", o.api_key, "Sent as 'Authorization: Bearer KEY'");
  app.add_option("--served-model", o.served_model, "The requests' \"model\" (default: the first id /v1/models lists)");
  app.add_option("--timeout", o.timeout_s, "Seconds of silence after which a stream fails")->capture_default_str();
  app.add_flag("--json", o.json, "Also print one JSON object with every number");
  app.add_option("--device", o.device, "--model: auto, cpu or cuda")->capture_default_str();
  app.add_option("--precision", o.precision, kPrecisionModelHelp)->capture_default_str();
  add_parallel_options(&app, o.parallel, "--model: ");
  app.add_option("--threads", o.threads, "--model: CPU threads for the forward (0 = all cores)")->capture_default_str();
  app.add_option("--max-batch", o.max_batch, "--model: sequences decoded together")->capture_default_str();
  app.add_option("--prefill-chunk", o.prefill_chunk, "--model: prompt tokens fed per scheduler step")->capture_default_str();
  app.add_option("--mtp", o.mtp, "--model: default MTP drafts per round (0 = off)")->capture_default_str();
  app.add_option("--max-context", o.max_context, "--model: prompt + generated tokens per request (0 = the model's)")
      ->capture_default_str();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 1;
  }
  return guarded([&] { return kiln::cli::run_bench_serve(o, std::cout, std::cerr); });
}

}  // namespace

int main(int argc, char** argv) {
  if (argc >= 2 && std::string_view(argv[1]) == "bench" &&
      std::any_of(argv + 2, argv + argc, [](const char* a) { return std::string_view(a) == "--serve"; })) {
    return bench_serve_main(argc - 1, argv + 1);
  }
  CLI::App app{"kiln: DeepSeek-V4 inference engine"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "kiln 0.1.0");

  kiln::cli::InspectOptions inspect;
  auto* ins = app.add_subcommand("inspect", "Report how a checkpoint would load (headers only): schemes per module "
                                            "group, missing/unused tensors, warnings, verdict");
  ins->add_option("dir", inspect.dir, "Checkpoint directory (config.json + *.safetensors)")->required();
  ins->add_flag("--json", inspect.json, "Machine-readable report (schema kiln.inspect/1, docs/inspect-json.md)");

  kiln::cli::ScoreOptions score;
  auto* sc = app.add_subcommand("score", "Run the model over a token sequence and write its logits as float32 .npy");
  sc->add_option("--model", score.model, "Checkpoint directory")->required();
  sc->add_option("--tokens", score.tokens, "Token ids: 5,17,42 or a .npy integer array")->required();
  sc->add_option("--out", score.out, "Output .npy, float32 [T, vocab]")->required();
  sc->add_option("--mode", score.mode, "Feeding: full | incremental | chunked:N (logits must not depend on it)")
      ->capture_default_str();
  sc->add_option("--mtp-out", score.mtp_out,
                 "Also write MTP draft logits [T-1, vocab]: row t from position t's streams and token t+1");
  sc->add_option("--device", score.device, "auto (cuda when a usable H100/H200 is present, else cpu), cpu or cuda")->capture_default_str();
  sc->add_option("--precision", score.precision, kPrecisionHelp)->capture_default_str();
  add_parallel_options(sc, score.parallel);
  sc->add_option("--gpu-memory-fraction", score.gpu_memory_fraction,
                 "Share of the GPU's total memory kiln may allocate (weights, activations, decode state); a model that does not fit fails before loading")
      ->capture_default_str();
  sc->add_option("--max-context", score.max_context, "Positions allowed (0 = the model's max_position_embeddings)")
      ->capture_default_str();
  sc->add_option("--threads", score.threads, "CPU threads (0 = all cores)")->capture_default_str();

  kiln::cli::GenerateOptions gen;
  auto* ge = app.add_subcommand("generate", "Generate tokens after a prompt of token ids");
  ge->add_option("--model", gen.model,
                 "Checkpoint directory (default: the bundled " + std::string(kiln::cli::kDefaultModelName) + ", found via $" +
                     kiln::cli::kDefaultModelEnv + ", ../models next to the executable, or the source tree)");
  ge->add_option("--tokens", gen.tokens, "Prompt token ids: 5,17,42 or a .npy integer array")->required();
  ge->add_option("--max-tokens", gen.max_tokens, "Tokens to generate")->capture_default_str();
  ge->add_option("--temperature", gen.sampling.temperature, "0 = greedy (argmax, ties to the lowest id)")
      ->capture_default_str();
  ge->add_option("--top-k", gen.sampling.top_k, "Sample from the k most likely (0 = all)")->capture_default_str();
  ge->add_option("--top-p", gen.sampling.top_p, "Nucleus sampling mass (1 = all)")->capture_default_str();
  ge->add_option("--seed", gen.sampling.seed, "Sampling seed")->capture_default_str();
  ge->add_flag("--ignore-eos", gen.ignore_eos, "Do not stop at the end-of-sequence token");
  ge->add_option("--mtp", gen.mtp,
                 "Speculative decoding: K = 1..4 tokens drafted per round by the MTP block, verified in one "
                 "main-model pass (exact: greedy output is unchanged; sampling keeps the model's distribution); "
                 "with a DSpark drafter K = 1..its block size");
  ge->add_option("--spec", gen.spec, "dspark | mtp | off: the drafter of --mtp K (default: what the checkpoint has; "
                                     "dspark alone drafts the whole block)");
  ge->add_option("--dspark-min-survival", gen.dspark_min_survival,
                  "DSpark: verify only the leading drafts whose survival (the product of the confidence head's outputs) "
                  "is at least this, 0..1 (0: every draft); decoding stays exact")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  ge->add_option("--sampled-drafts", gen.sampled_drafts, kSampledDraftsHelp)
      ->check(CLI::IsMember({"auto", "argmax", "draw"}))
      ->capture_default_str();
  ge->add_flag("--compare-plain", gen.compare_plain,
               "With --mtp: also run plain decoding and report its tokens/s (JSON: plain, speedup_decode)");
  ge->add_flag("--json", gen.json,
               "Print one JSON object: tokens (generated ids), timing; with --mtp, acceptance per draft position");
  ge->add_option("--device", gen.device, "auto (cuda when a usable H100/H200 is present, else cpu), cpu or cuda")->capture_default_str();
  ge->add_option("--precision", gen.precision, kPrecisionHelp)->capture_default_str();
  add_parallel_options(ge, gen.parallel);
  ge->add_option("--gpu-memory-fraction", gen.gpu_memory_fraction,
                 "Share of the GPU's total memory kiln may allocate (weights, activations, decode state); a model that does not fit fails before loading")
      ->capture_default_str();
  ge->add_option("--max-context", gen.max_context, "Positions allowed (0 = the model's max_position_embeddings)")
      ->capture_default_str();
  ge->add_option("--threads", gen.threads, "CPU threads (0 = all cores)")->capture_default_str();

  kiln::cli::PerplexityOptions ppl;
  auto* pp = app.add_subcommand("perplexity", "Perplexity of a model on a text: windows of --ctx tokens, each from a "
                                              "fresh state, every token but a window's first scored");
  pp->add_option("--model", ppl.model, "Checkpoint directory (default: the bundled model, as for generate)");
  auto* pp_text = pp->add_option("--text", ppl.text, "UTF-8 text file, tokenized with the model's tokenizer.json");
  auto* pp_tokens = pp->add_option("--tokens", ppl.tokens, "Token ids instead of a text: 5,17,42 or a .npy integer array");
  pp_text->excludes(pp_tokens);
  pp->add_option("--ctx", ppl.ctx, "Window length in tokens")->capture_default_str();
  pp->add_flag("--json", ppl.json, "Print one JSON object (tokens, scored_tokens, windows, nll_sum, perplexity, ...)");
  pp->add_option("--threads", ppl.threads, "CPU threads (0 = all cores)")->capture_default_str();
  pp->add_option("--device", ppl.device, "auto (cuda when a usable H100/H200 is present, else cpu), cpu or cuda")->capture_default_str();
  pp->add_option("--precision", ppl.precision, kPrecisionHelp)->capture_default_str();
  add_parallel_options(pp, ppl.parallel);
  pp->add_option("--gpu-memory-fraction", ppl.gpu_memory_fraction,
                 "Share of the GPU's total memory kiln may allocate (weights, activations, decode state); a model that does not fit fails before loading")
      ->capture_default_str();

  kiln::cli::BenchOptions bench;
  auto* be = app.add_subcommand("bench", "Decode speed of the CUDA backend per batch size: tokens/s, graph vs eager, "
                                         "weight bytes per pass vs measured HBM bandwidth; with --serve, a load "
                                         "generator for an HTTP server (docs/performance.md)");
  auto* be_model = be->add_option("--model", bench.model, "Checkpoint directory");
  auto* be_syn = be->add_flag("--synthetic", bench.synthetic,
                              "A V4-Flash-shaped model (real widths, --layers layers) with synthetic weights");
  be_model->excludes(be_syn);
  be->add_option("--layers", bench.layers, "Synthetic: backbone layers")->capture_default_str();
  be->add_option("--experts", bench.experts, "Synthetic: routed-expert scheme (bf16 = every linear BF16, fp8_block, "
                                             "int4_group, mxfp4, nvfp4)")->capture_default_str();
  be->add_option("--precision", bench.precision, kPrecisionHelp)->capture_default_str();
  be->add_option("--batches", bench.batches, "Batch sizes, comma-separated")->capture_default_str();
  be->add_option("--prefill", bench.prefill, "Also prefill throughput for SxT prompts (S sequences of T tokens), "
                                             "comma-separated, e.g. 1x8192,16x1024");
  be->add_option("--prefill-chunk", bench.prefill_chunk, "Rows per prefill pass")->capture_default_str();
  be->add_option("--steps", bench.steps, "Decode steps timed per batch size")->capture_default_str();
  be->add_option("--context", bench.context, "Prompt tokens per sequence")->capture_default_str();
  be->add_option("--mtp", bench.mtp, "Also speculative decoding with 1..N drafts per round: with the checkpoint's DSpark drafter when it has one (N up to its block size), else its MTP block (N up to 4)")->capture_default_str();
  be->add_option("--text", bench.text, "Prompts from this UTF-8 text (the model's tokenizer.json)");
  be->add_option("--dspark-min-survival", bench.dspark_min_survival,
                 "With --mtp and a DSpark drafter: verify only the leading drafts whose survival (the product of the "
                 "confidence head's outputs) is at least this, 0..1 (0: every draft), as generate and serve")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  be->add_flag("--json", bench.json, "Also print one JSON object with every number");
  be->add_option("--write-synthetic", bench.write_synthetic,
                 "Instead: write the V4-Flash-shaped model (--layers layers, an MTP block with --mtp N, --experts "
                 "mxfp4|nvfp4) to this directory as a DeepSeek-native checkpoint with random weights")
      ->excludes(be_model)
      ->excludes(be_syn);
  be->add_flag("--serve")->description("Instead: the HTTP load generator (N concurrent streams against a server; "
                                       "`kiln bench --serve --help`)");

  kiln::cli::QuantizeOptions quant;
  auto* qu = app.add_subcommand("quantize", "Write a quantized artifact from a (BF16) checkpoint, in the layout of a real "
                                            "producer (docs/quantization.md)");
  {
    std::string recipes = "Layout to write:";
    for (const auto& [name, what] : kiln::cli::quantize_recipes()) recipes += "\n  " + std::string(name) + ": " + std::string(what);
    qu->add_option("--model", quant.model, "Source checkpoint directory (either naming, any scheme)")->required();
    qu->add_option("--recipe", quant.recipe, recipes)->required();
    qu->add_option("--out", quant.out, "Output directory (must be empty or absent unless --force)")->required();
    qu->add_flag("--force", quant.force, "Replace the checkpoint files (*.safetensors, index, configs) in a non-empty --out");
    qu->add_flag("--nvfp4-split-global", quant.nvfp4_split_global,
                 "NVFP4 recipes: give w1 and w3 their own global scales (default: one per expert, as ModelOpt)");
    qu->add_option("--max-shard-size", quant.max_shard_size, "Main-model shard size limit (MTP gets its own shard)")
        ->capture_default_str();
    qu->add_option("--threads", quant.threads, "Threads (0 = all cores)")->capture_default_str();
  }

  kiln::cli::ServeOptions serve;
  auto* se = app.add_subcommand("serve", "OpenAI-compatible HTTP server (completions, chat, SSE streaming, metrics) "
                                         "with continuous batching");
  se->add_option("--model", serve.model, "Checkpoint directory with tokenizer.json (default: the bundled model)");
  se->add_option("--tokenizer", serve.tokenizer, "tokenizer.json (default: the model directory's)");
  se->add_option("--host", serve.host, "Address to listen on")->capture_default_str();
  se->add_option("--port", serve.port, "Port (0 = any free port)")->capture_default_str();
  se->add_option("--api-key", serve.api_key, "Require 'Authorization: Bearer KEY' on /v1/*");
  se->add_option("--served-model-name", serve.served_model_name, "Model id reported by /v1/models (default: directory name)");
  se->add_option("--threads", serve.threads, "CPU threads for the forward (0 = all cores)")->capture_default_str();
  se->add_option("--device", serve.device, "auto (cuda when a usable H100/H200 is present, else cpu), cpu or cuda")->capture_default_str();
  se->add_option("--precision", serve.precision, kPrecisionHelp)->capture_default_str();
  add_parallel_options(se, serve.parallel);
  se->add_option("--gpu-memory-fraction", serve.gpu_memory_fraction,
                 "Share of the GPU's total memory kiln may allocate (weights, activations, decode state); a model that does not fit fails before loading")
      ->capture_default_str();
  se->add_option("--max-batch", serve.max_batch, "Sequences decoded together")->capture_default_str();
  se->add_option("--max-waiting", serve.max_waiting, "Queued requests beyond the batch (more get 429)")->capture_default_str();
  se->add_option("--prefill-chunk", serve.prefill_chunk, "Prompt tokens fed per scheduler step")->capture_default_str();
  se->add_option("--mtp", serve.mtp,
                 "Default drafts per round (0 = off; requests may set 'mtp'): MTP 0..4, DSpark 0..its block size "
                 "(default: a DSpark drafter's whole block, else 0)");
  se->add_option("--spec", serve.spec, "dspark | mtp | off: the drafter (default: what the checkpoint has; a DSpark "
                                       "drafter by default on the CPU backend, on --device cuda with --spec dspark; off: requests may not ask for "
                                       "drafts)");
  se->add_option("--dspark-min-survival", serve.dspark_min_survival,
                  "DSpark: verify only the leading drafts whose survival (the product of the confidence head's outputs) "
                  "is at least this, 0..1 (0: every draft); decoding stays exact")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  se->add_option("--sampled-drafts", serve.sampled_drafts, kSampledDraftsHelp)
      ->check(CLI::IsMember({"auto", "argmax", "draw"}))
      ->capture_default_str();
  se->add_option("--max-context", serve.max_context, "Prompt + generated tokens per request (0 = the model's maximum)")
      ->capture_default_str();
  se->add_option("--http-threads", serve.http_threads, "Concurrent connections")->capture_default_str();
  se->add_option("--max-body-bytes", serve.max_body_bytes, "Larger request bodies get 413")->capture_default_str();
  se->add_option("--idle-timeout", serve.idle_timeout_s, "Seconds an open connection may wait for its request")
      ->check(CLI::Range(1, 3600))
      ->capture_default_str();

  kiln::cli::TokenizeOptions tk;
  auto* to = app.add_subcommand("tokenize", "The token ids of a text, a file or a chat (as the server feeds them)");
  {
    auto* text = to->add_option("--text", tk.text, "A text (encoded as is: no BOS)");
    auto* file = to->add_option("--file", tk.file, "A UTF-8 file (encoded as is)");
    auto* chat = to->add_option("--chat", tk.chat, "A chat: JSON (or a JSON file) of messages, or {\"messages\": [...], "
                                                  "\"tools\", \"thinking\", ...}; DeepSeek-V4's chat encoding");
    text->excludes(file)->excludes(chat);
    file->excludes(chat);
    auto* tf = to->add_option("--tokenizer", tk.tokenizer, "tokenizer.json");
    to->add_option("--model", tk.model, "Or the tokenizer.json of this model directory (default: the bundled model)")
        ->excludes(tf);
    to->add_flag("--json", tk.json, "Print {\"ids\": [...]} (default: the ids comma-separated)");
  }

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    app.exit(e);
    return 1;
  }

  return guarded([&] {
    if (*ins) return kiln::cli::run_inspect(inspect, std::cout, std::cerr);
    if (*sc) return kiln::cli::run_score(score, std::cout, std::cerr);
    if (*ge) {
      gen.model = kiln::cli::model_or_default(gen.model);
      return kiln::cli::run_generate(gen, std::cout, std::cerr);
    }
    if (*pp) return kiln::cli::run_perplexity(ppl, std::cout, std::cerr);
    if (*qu) return kiln::cli::run_quantize(quant, std::cout, std::cerr);
    if (*be && !bench.write_synthetic.empty())
      return kiln::cli::run_write_synthetic(bench.write_synthetic, bench.layers, bench.experts, bench.mtp > 0,
                                           std::cout, std::cerr);
    if (*be) return kiln::cli::run_bench(bench, std::cout, std::cerr);
    if (*se) return kiln::cli::run_serve(serve, std::cout, std::cerr);
    if (*to) return kiln::cli::run_tokenize(tk, std::cout, std::cerr);
    return 1;
  });
}
