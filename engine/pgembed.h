/* engine/pgembed.h: the embedded PostgreSQL cluster behind `flowd serve --data DIR`.
 *
 * Layout of DIR (made absolute first; relative paths are resolved against the working directory):
 *   DIR/pg/              the cluster (initdb of the installed server, superuser "postgres")
 *   DIR/.s.PGSQL.5432    the server's only socket: listen_addresses is empty, DIR is mode 0700
 *   DIR/postgres.log     the server log (and initdb's output)
 *   DIR/flowd.lock       serialises concurrent starters on the same DIR (flock)
 *   DIR/flowd.owner      the process that started the server and will stop it (pid, start time)
 * The whole socket path must fit in sockaddr_un (107 bytes), which limits DIR to about 90 bytes.
 *
 * PostgreSQL refuses to run as root: as root, initdb and pg_ctl run as the `postgres` system user and
 * DIR is chowned to it; as any other user they run as that user. DIR must be new, empty, or already
 * a flowd data folder (anything else is refused rather than taken over).
 *
 * Blocking: start-up and shutdown only. initdb and pg_ctl are child processes waited for with
 * waitpid(pid): while start or stop runs, nothing else in the process may reap children it did not
 * start (waitpid(-1), SIGCHLD set to SIG_IGN, a libev child watcher on the default loop). */
#pragma once

#include <stdbool.h>

#include "engine/err.h"

typedef struct eng_pgembed eng_pgembed;

/* Starts the cluster in data_dir, creating DIR and running initdb on first use (initdb from PATH,
 * else the highest /usr/lib/postgresql/<N>/bin), and creates the database "flowd" when missing.
 * When a server already runs on DIR (another flowd process or subcommand), connects to it and will
 * not stop it, unless the process that started it is gone (killed with -9): then this handle
 * adopts the server and stops it like its starter would have. A postmaster.pid left by a crash is
 * handled. On success *out is a new handle the
 * caller releases with eng_pgembed_stop. Errors: ENG_EINVAL (unusable path, e.g. too long),
 * ENG_ESYS (file system, fork, missing `postgres` user), ENG_EDB (initdb or start failed: the
 * message quotes the log), ENG_ETIMEOUT (server did not come up in time). */
ENG_MUST_CHECK eng_rc eng_pgembed_start(const char *data_dir, eng_pgembed **out, eng_err *err);

/* libpq conninfo of the "flowd" database, valid until eng_pgembed_stop. */
const char *eng_pgembed_conninfo(const eng_pgembed *pg);

/* True when eng_pgembed_start started the server (so eng_pgembed_stop will stop it). */
bool eng_pgembed_owned(const eng_pgembed *pg);

/* For subcommands given --data: the conninfo (caller frees) of the flowd database of a cluster
 * already running in data_dir, or ENG_ENOTFOUND when none answers there. Never starts anything. */
ENG_MUST_CHECK eng_rc eng_pgembed_attach(const char *data_dir, char **conninfo, eng_err *err);

/* Stops the server if this handle started it (pg_ctl stop -m fast, waiting), then frees the handle.
 * NULL-safe. */
void eng_pgembed_stop(eng_pgembed *pg);
