/* Fuzz target backing chain: parts "a", "b", ... of the input are images in
 * one folder; "a" is opened with probing, so its backing name (qcow2
 * backing file, vmdk parentFileNameHint, VHD parent locator) may name a
 * sibling, itself, or loop through several. */
#include "fuzz_target.h"

FZ_TARGET(NULL, FZ_SPLIT_PARTS)
