/* expertd's entry point: dispatches to a subcommand. */
#include <stdio.h>
#include <string.h>

#include "daemon/commands.h"

static void usage(FILE *out)
{
    fprintf(out,
            "usage: expertd COMMAND [OPTIONS]\n"
            "\n"
            "commands:\n"
            "  serve      serve a model over an OpenAI-compatible HTTP API (expertd serve --help)\n"
            "  generate   generate tokens offline from a checkpoint (expertd generate --help)\n"
            "  plan       size the GPU expert cache from a routing trace (expertd plan --help)\n"
            "  perplexity score a text file, as llama-perplexity (expertd perplexity --help)\n"
            "  check-config FILE\n"
            "             check a config file and print the settings it gives\n"
            "  version    print the version, compiled backends and GPUs found\n"
            "  help       print this message\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "serve") == 0)
        return xd_cmd_serve(argc - 2, argv + 2);
    if (strcmp(cmd, "generate") == 0)
        return xd_cmd_generate(argc - 2, argv + 2);
    if (strcmp(cmd, "perplexity") == 0)
        return xd_cmd_perplexity(argc - 2, argv + 2);
    if (strcmp(cmd, "plan") == 0)
        return xd_cmd_plan(argc - 2, argv + 2);
    if (strcmp(cmd, "check-config") == 0)
        return xd_cmd_check_config(argc - 2, argv + 2);
    if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0)
        return xd_cmd_version(argc - 2, argv + 2);
    if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
        usage(stdout);
        return 0;
    }
    fprintf(stderr, "expertd: unknown command '%s'\n\n", cmd);
    usage(stderr);
    return 2;
}
