/* imgctl entry point: picks the subcommand, nothing else. */
#include <stdio.h>
#include <string.h>

#include "ctl/common.h"
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
    fprintf(out, "\nEvery command also takes:\n"
                 "  --allow-outside  follow backing files, data files and VMDK extents that lie\n"
                 "                   outside the image's own folder (refused by default)\n");
}

/* --allow-outside is every command's option: take it out of argv here, so
 * that no command's parser has to know it.  Arguments after "--" are file
 * names and stay. */
static int take_global_options(int argc, char **argv)
{
    int out = 1;
    bool names_only = false;
    for (int i = 1; i < argc; i++) {
        if (!names_only && strcmp(argv[i], "--allow-outside") == 0) {
            ctl_allow_outside = true;
            continue;
        }
        if (strcmp(argv[i], "--") == 0)
            names_only = true;
        argv[out++] = argv[i];
    }
    argv[out] = NULL;
    return out;
}

int main(int argc, char **argv)
{
    argc = take_global_options(argc, argv);
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
