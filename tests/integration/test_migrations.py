"""Migrations: gpumatchd refuses to start on a schema older than it needs and
names the missing migration; `gpumatchd migrate` applies every migration the
database has not recorded, also one numbered below the newest applied (one
from a branch that landed later), and is idempotent."""

import os
import shutil
import subprocess
import tempfile

import cluster
import common
from common import ItCase


def setUpModule():
    common.setup_module(__name__)


def tearDownModule():
    common.teardown_module(__name__)


def run_gpumatchd(c, *args, env_extra=None, conninfo=None):
    env = dict(cluster._clean_env(), **(env_extra or {}))
    cmd = [cluster.gpumatchd_path(), args[0], "--pg_conninfo=" + (conninfo or c.pg_conninfo),
           "--redis_host=" + c.redis_host, "--redis_port=%d" % c.redis_port,
           "--listen_host=127.0.0.1", "--listen_port=0"] + list(args[1:])
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)


class MigrationTest(ItCase):
    def newest(self):
        return max(int(v) for (v, *_rest) in self.c.psql("SELECT version FROM schema_migrations"))

    def test_start_refused_while_a_migration_is_missing(self):
        newest = self.newest()
        name = self.c.psql_value("SELECT name FROM schema_migrations WHERE version = %d"
                                 % newest)
        self.c.psql("DELETE FROM schema_migrations WHERE version = %d" % newest)
        try:
            r = run_gpumatchd(self.c, "serve")
            self.assertNotEqual(r.returncode, 0, r.stderr)
            self.assertIn("migration %s is missing" % name, r.stderr)
            self.assertIn("gpumatchd migrate", r.stderr)
        finally:
            self.c.psql("INSERT INTO schema_migrations (version, name) VALUES (%d, '%s')"
                        % (newest, name))

    def test_migrate_fills_a_gap_and_is_idempotent(self):
        # a database of its own, migrated from a copy of the migrations
        # without one of them; the missing one arrives later
        db = "gap_%d" % os.getpid()
        self.c.psql("CREATE DATABASE %s" % db)
        conninfo = self.c.pg_conninfo.replace("dbname=gpumatch", "dbname=" + db)
        self.assertIn("dbname=" + db, conninfo)
        src = os.path.join(cluster.SOURCE, "migrations")
        files = sorted(f for f in os.listdir(src) if f.endswith(".sql"))
        self.assertGreaterEqual(len(files), 2)
        d = tempfile.mkdtemp(prefix="gm-migr-")
        try:
            for f in files:
                shutil.copy(os.path.join(src, f), d)
            # an extra migration numbered between two real ones, written as
            # if a branch added it
            first = int(files[0][:4])
            gap_v = None
            for v in range(first + 1, 10000):
                if not any(f.startswith("%04d_" % v) for f in files):
                    gap_v = v
                    break
            self.assertIsNotNone(gap_v)
            gap = "%04d_gap_test.sql" % gap_v
            env = {"GPUMATCH_MIGRATIONS": d}
            r = run_gpumatchd(self.c, "migrate", env_extra=env, conninfo=conninfo)
            self.assertEqual(r.returncode, 0, r.stderr)
            with open(os.path.join(d, gap), "w") as f:
                f.write("CREATE TABLE gap_test (x integer);\n")
            r = run_gpumatchd(self.c, "migrate", env_extra=env, conninfo=conninfo)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("applied %s" % gap, r.stderr)
            out = subprocess.run(["psql", "-X", "-qAt", "-d", conninfo, "-c",
                                  "SELECT count(*) FROM schema_migrations WHERE version = %d;"
                                  " SELECT to_regclass('gap_test') IS NOT NULL" % gap_v],
                                 capture_output=True, text=True, env=cluster._clean_env())
            self.assertEqual(out.stdout.split(), ["1", "t"], out.stderr)
            # nothing left to do the second time
            r = run_gpumatchd(self.c, "migrate", env_extra=env, conninfo=conninfo)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertNotIn("applied", r.stderr)
        finally:
            shutil.rmtree(d, ignore_errors=True)
            self.c.psql("DROP DATABASE IF EXISTS %s" % db)
