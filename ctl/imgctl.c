/* imgctl entry point: picks the subcommand, nothing else. */
#include <stdio.h>
#include <string.h>

#include "ctl/imgctl.h"

extern const struct ctl_cmd ctl_cmd_info, ctl_cmd_map, ctl_cmd_check, ctl_cmd_compare,
    ctl_cmd_create, ctl_cmd_resize;

extern const struct ctl_cmd ctl_cmd_convert, ctl_cmd_commit, ctl_cmd_rebase;

/* Subcommands, in the order `imgctl --help` lists them. */
static const struct ctl_cmd *const commands[] = {
    &ctl_cmd_info,
    &ctl_cmd_map,
    &ctl_cmd_check,
    &ctl_cmd_compare,
    &ctl_cmd_create,
    &ctl_cmd_resize,
    &ctl_cmd_convert,
    &ctl_cmd_commit,
    &ctl_cmd_rebase,
    NULL,
};

static void usage(FILE *out)
{
    fprintf(out, "usage: imgctl COMMAND [options]   (imgctl COMMAND --help for its options)\n\n"
                 "Commands, spelled and optioned as qemu-img's:\n");
    for (const struct ctl_cmd *const *c = commands; *c; c++)
        fprintf(out, "  %-10s %s\n", (*c)->name, (*c)->summary);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 1;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "-V") == 0) {
        printf("imgctl %s\n", IMGCTL_VERSION);
        return 0;
    }
    for (const struct ctl_cmd *const *c = commands; *c; c++)
        if (strcmp((*c)->name, argv[1]) == 0)
            return (*c)->run(argc - 1, argv + 1);
    fprintf(stderr, "imgctl: unknown command '%s' (imgctl --help lists them)\n", argv[1]);
    return 1;
}
