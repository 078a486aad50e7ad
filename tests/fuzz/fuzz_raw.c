/* Fuzz target raw: the SEEK_DATA map; with probing this is also every probe
 * against arbitrary bytes */
#include "fuzz_target.h"

FZ_TARGET("raw", FZ_SINGLE)
