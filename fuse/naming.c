/* How a source file is named in the mount: "disk.qcow2" -> "disk.raw". */
#include "imgfs.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Names that mark a file as a raw image even though raw has no magic. */
static const char *const raw_suffixes[] = { ".img", ".raw", ".iso", ".dd", ".bin", NULL };

bool name_has_raw_suffix(const char *name)
{
    size_t n = strlen(name);
    for (const char *const *s = raw_suffixes; *s; s++) {
        size_t k = strlen(*s);
        if (n > k && strcasecmp(name + n - k, *s) == 0)
            return true;
    }
    return false;
}

/* The preferred name: without its last suffix, plus ".raw".  A leading dot
 * (".hidden") is not a suffix. */
char *name_short(const char *name)
{
    size_t n = strlen(name);
    if (n > 4 && strcmp(name + n - 4, ".raw") == 0)
        return strdup(name);
    const char *dot = strrchr(name, '.');
    if (dot && dot != name)
        n = (size_t)(dot - name);
    char *out;
    return asprintf(&out, "%.*s.raw", (int)n, name) < 0 ? NULL : out;
}

/* The name used when two images of a folder would share the short one. */
char *name_full(const char *name)
{
    char *out;
    return asprintf(&out, "%s.raw", name) < 0 ? NULL : out;
}
