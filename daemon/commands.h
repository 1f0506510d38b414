/* The expertd subcommands, each a main-like entry point returning an exit status. */
#ifndef XD_COMMANDS_H
#define XD_COMMANDS_H

/* expertd generate: offline generation from token ids (argv excludes "generate"). */
int xd_cmd_generate(int argc, char **argv);

/* expertd serve: the OpenAI-compatible HTTP daemon (argv excludes "serve"). */
int xd_cmd_serve(int argc, char **argv);

/* expertd check-config FILE [FLAGS]: validates a config file, prints the effective settings. */
int xd_cmd_check_config(int argc, char **argv);

/* expertd version: version, compiled backends and the GPUs found. */
int xd_cmd_version(int argc, char **argv);

/* expertd plan: replays a routing trace through the expert cache with no GPU. */
int xd_cmd_plan(int argc, char **argv);

/* expertd perplexity: a text file's perplexity in windows of --ctx tokens (argv excludes
 * "perplexity"). */
int xd_cmd_perplexity(int argc, char **argv);

#endif
