/* The create options of the host file, shared by every format. */
#include "core/format.h"

#include <errno.h>
#include <string.h>

/* qemu puts these on its protocol (file) driver, so `qemu-img create -f FMT
 * -o help FILE` lists them after the format's own and its Formatting line
 * prints them last, in this order.  Here the driver that writes the file
 * honours them (or says it cannot), since there is no separate file layer. */
const struct img_create_option img_file_create_options[] = {
    { "nocow", "bool (on/off)", "Turn off copy-on-write for the file (btrfs only)", NULL },
    { "preallocation", "str", "Preallocation mode (allowed values: off, falloc, full)", NULL },
    { "extent_size_hint", "size", "Extent size hint for the file, 0 to disable", NULL },
    { NULL, NULL, NULL, NULL },
};

int img_file_create_option(const char *key, const char *value)
{
    if (strcmp(key, "nocow") == 0 || strcmp(key, "extent_size_hint") == 0)
        return 1;
    if (strcmp(key, "preallocation") != 0)
        return 0;
    if (strcmp(value, "off") && strcmp(value, "falloc") && strcmp(value, "full"))
        return -EINVAL;
    return 1;
}
