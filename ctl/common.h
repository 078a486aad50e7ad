/* Helpers every imgctl subcommand shares: messages, option parsing, sizes,
 * -o lists, JSON output, the progress bar, opening and creating images.
 *
 * Conventions:
 *  - every message goes to stderr as "imgctl: MESSAGE", as qemu-img prints
 *    "qemu-img: MESSAGE", so that scripts matching the words still work;
 *  - functions that can fail print their own one-line message and return a
 *    negative value (or NULL); the caller only picks the exit code.
 *
 * The pure string parsers (sizes, option lists) live in core/parse.c so that
 * drivers can parse "cluster_size=64k" the same way and unit tests reach them
 * through libimgcore.a; the ctl_ names here are the ones subcommands use. */
#ifndef IMGCTL_COMMON_H
#define IMGCTL_COMMON_H

#include <getopt.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "core/format.h"
#include "core/img.h"
#include "core/parse.h"

/* ---- messages --------------------------------------------------------- */

/* "imgctl: MESSAGE\n" on stderr. */
void ctl_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* A usage mistake: "imgctl: MESSAGE" then "Try 'imgctl CMD --help' for more
 * information."  Returns 1, qemu-img's exit code for bad usage, so that a
 * subcommand can `return ctl_usage_error(...)`. */
int ctl_usage_error(const char *cmd, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* ---- option parsing --------------------------------------------------- */

/* getopt_long with qemu-img's error messages ("unrecognized option '--x'",
 * "missing argument for option '-f'" + the --help hint).  Call it in a loop
 * like getopt_long; argv[0] is the subcommand name.  Returns the option, -1
 * at the end, or '?' after printing the message (then exit 1).  The first
 * call of a process starts at argv[1]; call ctl_getopt_reset() to parse
 * another argv (unit tests). */
int ctl_getopt(int argc, char **argv, const char *shortopts,
               const struct option *longopts);
void ctl_getopt_reset(void);

/* --output=human|json */
enum ctl_output { CTL_OUTPUT_HUMAN, CTL_OUTPUT_JSON };
/* Prints qemu-img's "--output must be used with human or json as argument."
 * and returns -1 on anything else. */
int ctl_parse_output(const char *arg, enum ctl_output *out);

/* ---- sizes ------------------------------------------------------------ */

/* qemu-img sizes: "4096", "10G", "512M", "1.5G", "64k"; suffixes b/B, k/K,
 * M, G, T, P, E (powers of 1024, either case).  0, or -EINVAL (not a size)
 * / -ERANGE (too large: >= 2^63).  Prints nothing. */
static inline int ctl_parse_size(const char *s, uint64_t *bytes)
{
    return img_parse_size(s, bytes);
}

/* resize's size: "10G" (absolute), "+1G" (grow by), "-512M" (shrink by). */
static inline int ctl_parse_size_delta(const char *s, struct img_size_delta *d)
{
    return img_parse_size_delta(s, d);
}

/* "16 MiB", "1.5 GiB", "196 KiB", as qemu-img's human output prints sizes
 * (three significant digits).  Returns buf. */
char *ctl_human_size(uint64_t bytes, char *buf, size_t len);

/* ---- -o option lists -------------------------------------------------- */

/* All the -o arguments of one command line, in order: several -o accumulate
 * as in qemu-img, a later key overrides an earlier one for ctl_kvlist_get. */
struct ctl_kvlist {
    struct img_kv *kv;   /* pointers into the strings the list owns */
    size_t n;
    char **owned;        /* one buffer per -o argument */
    size_t n_owned;
};

/* Parse "k=v,k2=v2" (",," is a literal comma inside a value; a bare "key"
 * means key=on) and append it.  Prints "imgctl: Invalid option list ..." and
 * returns -1 on an empty key. */
int ctl_kvlist_add(struct ctl_kvlist *l, const char *arg);
/* The last value given for `key`, or NULL. */
const char *ctl_kvlist_get(const struct ctl_kvlist *l, const char *key);
/* Was "help" or "?" among the options (-o help)? */
bool ctl_kvlist_wants_help(const struct ctl_kvlist *l);
void ctl_kvlist_free(struct ctl_kvlist *l);

/* Print the create options of `fmt` (its driver's create_options) as
 * "qemu-img create -f FMT -o help [PATH]" does: without a PATH the format's
 * own, with one also the host file's (img_file_create_options).  Returns 0,
 * or -1 when the driver has no list. */
int ctl_print_create_options(const struct img_format *fmt, const char *path, FILE *out);

/* Refuse a -o key that `fmt` does not take, or a size option that is no
 * size, before any file is touched: "imgctl: PATH: Invalid parameter 'K'".
 * A driver without a list gets everything in its create entry. */
int ctl_check_create_options(const struct img_format *fmt, const struct ctl_kvlist *l,
                             const char *path);

/* qemu-img's "Formatting 'PATH', fmt=FMT cluster_size=65536 ... size=N ..."
 * line: the driver's options, then the host file's, each given value or
 * the driver's `shown` default. */
void ctl_print_formatting(FILE *out, const char *path, const struct img_format *fmt,
                          const struct img_create_opts *o);

/* ---- JSON output ------------------------------------------------------ */

/* s as a JSON string literal, quotes included: ", \, control characters and
 * DEL escaped as qemu's JSON writer does (\" \\ \b \f \n \r \t \uXXXX). */
void ctl_json_string(FILE *out, const char *s);

/* A small pretty-printer shaped like qemu's (4-space indent, "key": value,
 * one member per line), enough for info / check / snapshot output. */
#define CTL_JSON_MAX_DEPTH 16
struct ctl_json {
    FILE *out;
    int depth;
    bool has_members[CTL_JSON_MAX_DEPTH];
};
void ctl_json_init(struct ctl_json *j, FILE *out);
/* key is NULL at the top level and inside arrays. */
void ctl_json_begin_object(struct ctl_json *j, const char *key);
void ctl_json_end_object(struct ctl_json *j);
void ctl_json_begin_array(struct ctl_json *j, const char *key);
void ctl_json_end_array(struct ctl_json *j);
void ctl_json_str(struct ctl_json *j, const char *key, const char *val);
void ctl_json_int(struct ctl_json *j, const char *key, int64_t val);
void ctl_json_uint(struct ctl_json *j, const char *key, uint64_t val);
void ctl_json_bool(struct ctl_json *j, const char *key, bool val);
/* After the outermost value: the final newline. */
void ctl_json_finish(struct ctl_json *j);

/* ---- progress (-p) ---------------------------------------------------- */

/* "    (42.00/100%)" redrawn in place on stdout, as qemu-img -p; drawn only
 * when asked for and stdout is a terminal, so logs and pipes stay clean. */
struct ctl_progress {
    bool enabled;
    int last_drawn;      /* hundredths of a percent, -1 = nothing yet */
};
void ctl_progress_init(struct ctl_progress *p, bool requested);
void ctl_progress_update(struct ctl_progress *p, uint64_t done, uint64_t total);
/* Draws 100% and ends the line. */
void ctl_progress_done(struct ctl_progress *p);

/* ---- images ----------------------------------------------------------- */

/* --allow-outside: follow backing files, data files and VMDK extents that
 * resolve outside the top image's folder (refused by default: a downloaded
 * image must not make imgctl read /etc/shadow). */
extern bool ctl_allow_outside;

#define CTL_OPEN_RW           0x1u  /* open for writing (takes the write lock) */
#define CTL_OPEN_FORCE_SHARE  0x2u  /* -U: take no lock */
#define CTL_OPEN_NO_BACKING   0x4u  /* this layer alone (rebase -u, info) */
#define CTL_OPEN_UNSAFE_CACHE 0x8u  /* -t unsafe: never sync (convert's default) */

/* qemu-img's -t cache modes: none, writeback, writethrough, directsync, unsafe.
 * Sets *unsafe for "unsafe"; prints the error and returns -1 on another word. */
int ctl_parse_cache(const char *mode, bool *unsafe);

/* The driver named by -f, or NULL after "imgctl: Unknown file format 'X'". */
const struct img_format *ctl_format(const char *name);

/* Open `path` (format NULL = probe) with its backing chain.  A command line
 * tool follows backing files wherever they are, as qemu-img does, so the
 * daemon's confinement is off here.  NULL after printing
 * "imgctl: Could not open 'PATH': REASON". */
struct img *ctl_open(const char *path, const char *format, unsigned flags);

/* Create `path` with `fmt`'s create entry.  On failure prints
 * "imgctl: PATH: REASON", removes the file if this call created it (no
 * half-written image left behind) and returns a negative errno. */
int ctl_create(const char *path, const struct img_format *fmt,
               const struct img_create_opts *o);

/* Remove a destination that a failed command created; says so on stderr
 * when it cannot. */
void ctl_remove_created(const char *path);

/* The name under which qemu-img shows a backing file: `backing` as recorded
 * when absolute, else joined to the folder part of `image` as the user gave
 * it ("dir/top.qcow2" + "base.qcow2" = "dir/base.qcow2").  malloc'ed. */
char *ctl_backing_name(const char *image, const char *backing);

#endif
