// sparsering: the table of contents of a run. Parse the command line, load and validate the
// experiment, build the device mesh, train (or evaluate a checkpoint). Errors end every rank with
// one line and a status: 2 for bad input (config, flags, files), 1 for anything else.
#include <c10/util/Exception.h>

#include <iostream>
#include <string>

#include "configs/config.h"
#include "configs/sweep.h"
#include "configs/user_error.h"
#include "parallel/process_groups.h"
#include "trainer/cli.h"
#include "trainer/eval.h"
#include "trainer/hf/hf_commands.h"
#include "trainer/host_allocator.h"
#include "trainer/interrupt.h"
#include "trainer/state/memory_plan.h"
#include "trainer/sweep_listing.h"
#include "trainer/train.h"

using namespace sparsering;

namespace {

config::Experiment load(const trainer::CommandLine& line) {
  if (line.config_path.empty()) {
    return config::load_experiment(config::embedded_tiny_config(), "configs/tiny.pbtxt (embedded)",
                                   line.overrides);
  }
  return config::load_experiment_file(line.config_path, line.overrides);
}

// `sparsering plan`: --world-size N other than dp x cp sets dp = N / cp.
std::string plan(trainer::CommandLine line) {
  config::Experiment experiment = load(line);
  const int cp = experiment.parallel.context_parallel_size;
  int world = experiment.parallel.data_parallel_size * cp;
  if (line.plan_world_size > 0 && line.plan_world_size != world) {
    if (line.plan_world_size % cp != 0) {
      throw UserError("--world-size " + std::to_string(line.plan_world_size) +
                      ": must be a multiple of parallel.context_parallel_size (" +
                      std::to_string(cp) + ")");
    }
    line.overrides.push_back("parallel.data_parallel_size=" +
                             std::to_string(line.plan_world_size / cp));
    experiment = load(line);
    world = line.plan_world_size;
  }
  const auto gpu_bytes = static_cast<int64_t>(line.gpu_memory_gib * (1LL << 30));
  return trainer::memory_plan_table(experiment, trainer::plan_memory(experiment, world, gpu_bytes),
                                    gpu_bytes);
}

int run(const trainer::CommandLine& line, parallel::MpiSession& mpi, bool& collectives_started) {
  const bool leader = mpi.world_rank() == 0;
  if (line.help || line.command.empty()) {
    if (leader) std::cout << trainer::usage(line.command);
    return 0;
  }
  if (line.command == "sweep") {
    const config::Sweep sweep = config::load_sweep_file(line.sweep_path);
    if (leader) {
      std::cout << (line.print_name   ? sweep.name + "\n"
                    : line.print_runs ? trainer::sweep_launch_lines(sweep)
                                      : trainer::sweep_table(sweep));
    }
    return 0;
  }
  if (line.command == "plan") {
    if (leader) std::cout << plan(line);
    return 0;
  }
  const config::Experiment experiment = load(line);
  if (line.command == "world-size") {
    if (leader) {
      std::cout << experiment.parallel.data_parallel_size *
                       experiment.parallel.context_parallel_size
                << std::endl;
    }
    return 0;
  }
  config::validate_world(experiment, mpi.world_size());
  const trainer::EvalOptions eval_options{line.run_dir, line.checkpoint, line.attention,
                                          line.eval_sequences, line.logits_out};
  if (line.command == "eval") trainer::require_checkpoint(experiment, eval_options);
  const trainer::HfOptions hf_options{line.run_dir, line.hf_dir, line.checkpoint, line.out_dir,
                                      line.max_shard_bytes};
  const bool hf_command = line.command == "import-hf" || line.command == "export-hf";
  if (hf_command) trainer::check_hf_inputs(line.command, experiment, hf_options);
  collectives_started = true;
  if (hf_command) {
    // Weights move through the CPU only: no accelerator, MPI collectives.
    parallel::ProcessGroups groups(
        {experiment.parallel.data_parallel_size, experiment.parallel.context_parallel_size,
         experiment.parallel.intra_node_ring_size, experiment.parallel.head_parallel_size},
        /*use_nccl=*/false);
    if (line.command == "import-hf") {
      trainer::import_hf(experiment, groups, hf_options);
    } else {
      trainer::export_hf(experiment, groups, hf_options);
    }
    return 0;
  }
  const at::Device device = trainer::select_device(experiment);
  parallel::ProcessGroups groups(
      {experiment.parallel.data_parallel_size, experiment.parallel.context_parallel_size,
       experiment.parallel.intra_node_ring_size, experiment.parallel.head_parallel_size},
      /*use_nccl=*/device.is_cuda());
  if (line.command == "eval") {
    trainer::evaluate(experiment, groups, device, eval_options);
  } else {
    trainer::train(experiment, groups, device, {line.run_dir, line.resume, line.overwrite});
  }
  return 0;
}

// One write for the whole line: under mpirun a line written in pieces can be split by Open MPI's
// own abort notice, which arrives on the same terminal at the same moment.
void print_error_line(const std::string& line) { std::cerr << (line + "\n") << std::flush; }

}  // namespace

int main(int argc, char** argv) {
  trainer::keep_freed_host_memory();
  parallel::MpiSession mpi(&argc, &argv);
  trainer::install_interrupt_handlers(mpi.world_rank());
  bool collectives_started = false;
  int status = 0;
  try {
    status = run(trainer::parse_command_line({argv + 1, argv + argc}), mpi, collectives_started);
  } catch (const UserError& error) {
    // Input errors found before any collective are found identically by every rank: rank 0
    // reports and all exit. Later ones may be one rank's alone: that rank takes the job down.
    if (!collectives_started && mpi.world_rank() != 0) return 2;
    print_error_line(std::string("sparsering: error: ") + error.what());
    if (collectives_started && mpi.world_size() > 1) parallel::MpiSession::abort(2);
    return 2;
  } catch (const std::exception& error) {
    // Torch errors carry a C++ backtrace in what(); the message alone is the useful line.
    const auto* torch_error = dynamic_cast<const c10::Error*>(&error);
    print_error_line("sparsering: error on rank " + std::to_string(mpi.world_rank()) + ": " +
                     (torch_error ? torch_error->what_without_backtrace() : error.what()));
    if (mpi.world_size() > 1) parallel::MpiSession::abort(1);
    return 1;
  }
  return status;
}
