/* Fuzz target vdi: VirtualBox header and block map */
#include "fuzz_target.h"

FZ_TARGET("vdi", FZ_SINGLE)
