// momnet's data-parallel training over MPI (the momnet::distributed CMake
// target; docs/distributed.md): every part, in one include. Not included by
// momnet/momnet.hpp, which needs nothing beyond Eigen.
#pragma once

#include "momnet/distributed/agreement.hpp"
#include "momnet/distributed/broadcast.hpp"
#include "momnet/distributed/communicator.hpp"
#include "momnet/distributed/consistency.hpp"
#include "momnet/distributed/data_parallel.hpp"
#include "momnet/distributed/environment.hpp"
#include "momnet/distributed/error.hpp"
#include "momnet/distributed/gradient_reducer.hpp"
#include "momnet/distributed/sampler.hpp"
#include "momnet/distributed/sync_batch_norm.hpp"
