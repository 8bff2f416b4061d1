// GoogleTest main for every test binary: MPI is initialised once (the code under test uses
// communicators even on one rank) and torch runs one thread per rank.
#include <ATen/Parallel.h>
#include <gtest/gtest.h>
#include <mpi.h>

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  at::set_num_threads(1);
  testing::InitGoogleTest(&argc, argv);
  const int status = RUN_ALL_TESTS();
  // A failure on any rank fails the job on every rank.
  int worst = status;
  MPI_Allreduce(&status, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Finalize();
  return worst;
}
