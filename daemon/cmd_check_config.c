/* expertd check-config: validate a config file against a command's option table and print the
 * settings it gives, in the config file format. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "config_file.h"

static void usage(FILE *out)
{
    fprintf(out,
            "usage: expertd check-config FILE [FLAGS]\n"
            "\n"
            "Reads FILE as `expertd generate --config FILE` would, applies the EXPERTD_*\n"
            "environment variables and any FLAGS over it, checks every value, and prints the\n"
            "effective settings as a config file. Exit status 0 when valid, 1 with the message\n"
            "(file:line: key '...': what is wrong) when not.\n");
}

int xd_cmd_check_config(int argc, char **argv)
{
    if (argc < 1 || argv[0][0] == '-') {
        bool help = argc >= 1 && (strcmp(argv[0], "--help") == 0 || strcmp(argv[0], "-h") == 0);
        usage(help ? stdout : stderr);
        return help ? 0 : 2;
    }
    const char *path = argv[0];
    struct xd_cmd_settings s;
    struct xd_err err = {{0}};
    if (xd_cmd_generate_settings(&s) < 0) {
        fprintf(stderr, "expertd check-config: out of memory\n");
        return 1;
    }
    /* the file through --config, so that the precedence is exactly the command's */
    char **args = malloc(sizeof *args * (size_t)(argc + 2));
    if (!args) {
        free(s.values);
        fprintf(stderr, "expertd check-config: out of memory\n");
        return 1;
    }
    args[0] = "--config";
    args[1] = (char *)path;
    for (int i = 1; i < argc; i++)
        args[i + 1] = argv[i];
    struct xd_config_file *file = NULL;
    int status = 1;
    if (xd_config_file_load_opts(s.table, s.n_opts, s.values, argc + 1, args, &file, &err) < 0 ||
        s.validate(s.values, &err) < 0) {
        fprintf(stderr, "expertd check-config: %s\n", err.msg);
        goto out;
    }
    printf("# effective settings from %s (defaults < file < environment < flags)\n", path);
    xd_config_file_print(stdout, s.table, s.n_opts, s.values);
    fprintf(stderr, "expertd check-config: %s: OK (%zu keys set)\n", path,
            xd_config_file_n_keys(file));
    status = 0;
out:
    xd_config_file_destroy(file);
    free(args);
    free(s.values);
    return status;
}
