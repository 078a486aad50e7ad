/* Fuzz target vmdk: a hosted sparse (KDMV) or ESX (COWD) file: header,
 * embedded descriptor, grain directory and tables, stream-optimized markers */
#include "fuzz_target.h"

FZ_TARGET("vmdk", FZ_SINGLE)
