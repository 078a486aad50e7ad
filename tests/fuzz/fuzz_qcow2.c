/* Fuzz target qcow2: header, extensions, L1/L2 and refcount tables,
 * compressed clusters, external data file */
#include "fuzz_target.h"

FZ_TARGET("qcow2", FZ_SINGLE)
