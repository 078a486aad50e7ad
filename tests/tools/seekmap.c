/* seekmap FILE: print the data ranges of FILE as found with
 * lseek(SEEK_DATA / SEEK_HOLE), one "START LENGTH" line per range (decimal,
 * adjacent ranges merged).  Exit 1 on any error, including an answer that
 * does not move forward (which would otherwise loop for ever). */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: seekmap FILE\n");
        return 2;
    }
    int fd = open(argv[1], O_RDONLY);
    if (fd < 0) {
        fprintf(stderr, "seekmap: %s: %s\n", argv[1], strerror(errno));
        return 1;
    }
    struct stat st;
    if (fstat(fd, &st) < 0) {
        fprintf(stderr, "seekmap: %s: fstat: %s\n", argv[1], strerror(errno));
        return 1;
    }
    off_t size = st.st_size;
    off_t pos = 0, run_start = -1, run_end = -1;
    while (pos < size) {
        off_t d = lseek(fd, pos, SEEK_DATA);
        if (d < 0) {
            if (errno == ENXIO)
                break;
            fprintf(stderr, "seekmap: %s: SEEK_DATA at %jd: %s\n", argv[1],
                    (intmax_t)pos, strerror(errno));
            return 1;
        }
        if (d < pos || d >= size) {
            fprintf(stderr, "seekmap: %s: SEEK_DATA at %jd answered %jd (size %jd)\n",
                    argv[1], (intmax_t)pos, (intmax_t)d, (intmax_t)size);
            return 1;
        }
        off_t h = lseek(fd, d, SEEK_HOLE);
        if (h < 0) {
            fprintf(stderr, "seekmap: %s: SEEK_HOLE at %jd: %s\n", argv[1],
                    (intmax_t)d, strerror(errno));
            return 1;
        }
        if (h <= d || h > size) {
            fprintf(stderr, "seekmap: %s: SEEK_HOLE at %jd answered %jd (size %jd)\n",
                    argv[1], (intmax_t)d, (intmax_t)h, (intmax_t)size);
            return 1;
        }
        if (run_start >= 0 && d == run_end) {
            run_end = h;
        } else {
            if (run_start >= 0)
                printf("%jd %jd\n", (intmax_t)run_start, (intmax_t)(run_end - run_start));
            run_start = d;
            run_end = h;
        }
        pos = h;
    }
    if (run_start >= 0)
        printf("%jd %jd\n", (intmax_t)run_start, (intmax_t)(run_end - run_start));
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, "seekmap: write error\n");
        return 1;
    }
    close(fd);
    return 0;
}
