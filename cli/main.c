/* cli/main.c: the flowd command line (placeholder until the subcommands land). */
#include <stdio.h>

int main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "usage: flowd serve|migrate|enqueue|status|event|clock\n");
    return 2;
}
