/* Resolving and opening backing files named on the command line. */
#include "ctl/backing.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctl/common.h"

char *ctl_backing_path(const char *image, const char *name)
{
    const char *slash = strrchr(image, '/');
    if (name[0] == '/' || !slash)
        return strdup(name);
    size_t dir_len = (size_t)(slash - image);
    char *path = malloc(dir_len + strlen(name) + 2);
    if (path)
        sprintf(path, "%.*s/%s", (int)dir_len, image, name);
    return path;
}

struct img *ctl_open_backing(const char *image, const char *name, const char *format,
                             unsigned flags)
{
    char *path = ctl_backing_path(image, name);
    if (!path) {
        ctl_error("out of memory");
        return NULL;
    }
    struct img *img = ctl_open(path, format, flags);
    free(path);
    return img;
}

int ctl_probe_backing(const char *image, const char *name, char *fmt, size_t len)
{
    struct img *img = ctl_open_backing(image, name, NULL,
                                       CTL_OPEN_FORCE_SHARE | CTL_OPEN_NO_BACKING);
    if (!img)
        return -1;
    snprintf(fmt, len, "%s", img->fmt->name);
    img_close(img);
    return 0;
}
