/* Backing file names as qemu-img reads them on a command line: a relative
 * name given with -b/-B is relative to the image that records it, not to the
 * current folder (qemu-img create -b, convert -B, rebase -b). */
#ifndef IMGCTL_BACKING_H
#define IMGCTL_BACKING_H

#include <stddef.h>

#include "core/img.h"

/* `name` resolved against the folder of `image`; malloc'd, NULL on ENOMEM. */
char *ctl_backing_path(const char *image, const char *name);

/* Open the backing file `name` of `image` (flags as ctl_open).  NULL after
 * printing a message that names the file. */
struct img *ctl_open_backing(const char *image, const char *name, const char *format,
                             unsigned flags);

/* The probed format of the backing file `name` of `image`, into fmt. */
int ctl_probe_backing(const char *image, const char *name, char *fmt, size_t len);

#endif
