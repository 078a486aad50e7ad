/* Every input that ever broke a fuzz target (tests/fuzz/regressions/),
 * replayed on each `make test`: opened as every format and by probing, as
 * one file and, when it has parts, as a folder of files; the whole map
 * walked and the data read, exactly as the targets do.  A crash fails the
 * file's own test (criterion runs each in a child); a failure must carry a
 * message naming the file. */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The Makefile builds only the .c files of tests/unit into the unit tests; the harness
 * lives with the fuzz targets so that both replay the very same steps. */
#include "tests/fuzz/exercise.c"

#define REGRESSIONS_DIR "tests/fuzz/regressions"

struct reg_file {
    char name[256];   /* inline: parameters cross into criterion's children */
};

static void free_params(struct criterion_test_params *p)
{
    cr_free(p->params);
}

static int by_name(const void *a, const void *b)
{
    return strcmp(((const struct reg_file *)a)->name, ((const struct reg_file *)b)->name);
}

/* One test per file; with no file at all, one test that skips, since
 * criterion wants at least one parameter. */
ParameterizedTestParameters(regressions, replay)
{
    size_t n = 0, cap = 64;
    struct reg_file *files = cr_calloc(cap, sizeof(*files));
    DIR *d = opendir(REGRESSIONS_DIR);
    for (struct dirent *e; d && (e = readdir(d));) {
        if (e->d_name[0] == '.' || strcmp(e->d_name, "README") == 0 ||
            strlen(e->d_name) >= sizeof(files->name))
            continue;
        if (n == cap) {
            struct reg_file *more = cr_calloc(cap * 2, sizeof(*files));
            memcpy(more, files, cap * sizeof(*files));
            cr_free(files);
            files = more;
            cap *= 2;
        }
        strcpy(files[n++].name, e->d_name);
    }
    if (d)
        closedir(d);
    qsort(files, n, sizeof(*files), by_name);
    return cr_make_param_array(struct reg_file, files, n ? n : 1, free_params);
}

static uint8_t *slurp(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    cr_assert(f, "cannot open %s", path);
    uint8_t *buf = NULL;
    size_t cap = 0, n = 0, got;
    do {
        if (n == cap) {
            cap = cap ? cap * 2 : 65536;
            buf = realloc(buf, cap);
            cr_assert(buf);
        }
        got = fread(buf + n, 1, cap - n, f);
        n += got;
    } while (got > 0);
    fclose(f);
    *size = n;
    return buf;
}

static void replay(const char *name, const uint8_t *data, size_t size, enum fz_mode mode)
{
    static const char *const formats[] = { "qcow2", "vmdk", "vdi", "vpc", "raw", NULL };
    char why[1024];
    for (size_t i = 0; i < sizeof(formats) / sizeof(formats[0]); i++) {
        int fd_before = fz_lowest_free_fd();
        const char *path = fz_write_input(data, size, mode);
        int r = fz_exercise(path, formats[i], why, sizeof(why));
        cr_expect_eq(r, 0, "%s as %s (%s): %s", name, formats[i] ? formats[i] : "probed",
                     mode == FZ_SINGLE ? "one file" : "split into files", why);
        cr_expect_eq(fz_lowest_free_fd(), fd_before, "%s as %s leaked a file descriptor", name,
                     formats[i] ? formats[i] : "probed");
    }
}

ParameterizedTest(struct reg_file *f, regressions, replay, .timeout = 60)
{
    char path[512];
    if (!f->name[0])
        cr_skip_test("no file in " REGRESSIONS_DIR);
    snprintf(path, sizeof(path), "%s/%s", REGRESSIONS_DIR, f->name);
    size_t size;
    uint8_t *data = slurp(path, &size);
    replay(f->name, data, size, FZ_SINGLE);
    if (memmem(data, size, FZ_SPLIT, strlen(FZ_SPLIT)))
        replay(f->name, data, size, FZ_SPLIT_PARTS);
    free(data);
}

/* The replay itself must work, or an empty regressions folder would hide a
 * broken harness. */
Test(regressions, harness_reads_a_raw_file)
{
    uint8_t data[4096];
    char why[1024];
    memset(data, 0x5a, sizeof(data));
    const char *path = fz_write_input(data, sizeof(data), FZ_SINGLE);
    cr_assert_eq(fz_exercise(path, "raw", why, sizeof(why)), 0, "%s", why);
    cr_assert_eq(fz_exercise(path, "qcow2", why, sizeof(why)), 0, "%s", why);
}
