/* Fuzz target vhd (vpc): footer, dynamic header, BAT, block bitmaps, parent
 * locators */
#include "fuzz_target.h"

FZ_TARGET("vpc", FZ_SINGLE)
