/* Fuzz target vmdk descriptor text: part "a" is the descriptor, the parts
 * after FZ_SPLIT are the files its extent lines (and parentFileNameHint) may
 * name: "b", "c", ... (flat, sparse, or another descriptor). */
#include "fuzz_target.h"

FZ_TARGET("vmdk", FZ_SPLIT_PARTS)
