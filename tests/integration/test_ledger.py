"""The ledger. Hand-computed money for every way a lease ends
(success, failure, cancel, preemption, node lost), interim settlement of a
long lease, duplicate reports / heartbeats / settlements that never
double-bill, admission of submits against the tenant's balance and the hold
at placement, top-ups and payouts (idempotent, bad input names the field,
nothing written), authorization of every ledger RPC, reports on a small
fixed scenario, the audit, and a randomized run of 100,000+ operations from
concurrent clients with gpumatchd killed with kill -9 and restarted several
times, after which the audit finds nothing and report totals equal the
settled usage.

Prices are 3,600,000 micros per GPU-hour (1,000 per GPU-second) and the
platform fee is 10 %, so amounts are easy to check by hand. Where a test
fixes a lease's usage it moves started_at_us back in Postgres (the agent
"has run for N s", 0.3 s past the whole second) and its final report says
the job exited then. The bill is checked against the billing rule and the
times recorded, never against the wall clock: whole seconds from the start
to the billed end, the billed end no earlier than the recorded exit (the
true run) and no later than one heartbeat interval past it; the money then
follows from the seconds billed, by hand."""

import os
import time

import common
from common import ItCase, NodeAgent, job_spec, node_req, ok, submit, wait_job_state


PRICE = 3600000           # micros per GPU-hour: 1000 per GPU-second
FEE_PPM = 100000          # 10 %
HOUR_US = 3600 * 1000000
HB_INTERVAL_US = 300000   # --heartbeat_interval_ms below


def setUpModule():
    c = common.setup_module(__name__, [
        "--allow_unverified=true",
        "--cycle_interval_ms=200",
        "--heartbeat_interval_ms=%d" % (HB_INTERVAL_US // 1000),
        "--heartbeat_timeout_ms=1500",
        "--ledger_settle_interval_ms=200",
        "--ledger_meter_interval_ms=1000",
    ])
    p = ok(c.admin("GetPolicy", {}))["policy"]
    p = {k: v for k, v in p.items()
         if k not in ("version", "createdBy", "createdAtUs", "comment")}
    p["platformFeePpm"] = FEE_PPM
    ok(c.admin("SetPolicy", {"policy": p, "comment": "ledger tests: 10 % fee"}))
    # the leader locks the fee into leases once it has loaded the policy
    common.wait_for(lambda: "gpumatch_ledger_platform_fee_ppm %d" % FEE_PPM
                    in c.http("GET", "/metrics")[2].decode(), 10, 0.1, "the fee to apply")


def tearDownModule():
    common.teardown_module(__name__)


def q1(c, sql):
    return c.psql_value(sql)


def account(c, kind, owner):
    """(balance, pending debits, pending credits) of an account."""
    r = c.psql("SELECT balance_micros, pending_debits_micros, pending_credits_micros"
               " FROM ledger_accounts WHERE kind = %d AND owner_id = %s" % (kind, owner))
    return tuple(int(x) for x in r[0])


def lease_money(c, lease_id):
    """Sums per transfer kind for a lease: {kind: amount}."""
    rows = c.psql("SELECT kind, sum(amount_micros), count(*) FROM ledger_transfers"
                  " WHERE lease_id = %s GROUP BY kind" % lease_id)
    return {int(k): int(s) for k, s, _ in rows}


def lease_transfer_count(c, lease_id):
    return int(q1(c, "SELECT count(*) FROM ledger_transfers WHERE lease_id = %s" % lease_id))


def wait_settled(c, lease_id, timeout=15):
    common.wait_for(lambda: q1(c, "SELECT ledger_settled FROM leases WHERE id = %s"
                               % lease_id) == "t", timeout, 0.1,
                    "lease %s to be settled" % lease_id)


# lease id -> when its job exited, as ran_for made it
EXITED = {}


def ran_for(c, lease_id, seconds, meter=False):
    """The lease has run for `seconds` (+0.3 s) and its job exits now: moves
    its start back; the agent's final report will say it exited now (usage
    is billed to the reported exit, however late the report comes), and no
    interim metering runs past that meanwhile. meter=True: it keeps running
    (metered as it goes) until its report."""
    now = common.now_us()
    if not meter:
        EXITED[str(lease_id)] = now
    c.psql("UPDATE leases SET started_at_us = %d%s WHERE id = %s"
           % (now - int((seconds + 0.3) * 1e6),
              "" if meter else ", metered_at_us = %d" % (now + 3600 * 10**6), lease_id))


class LedgerAgent(NodeAgent):
    """Reports the exit time ran_for set, as a real agent reports its job's.
    Its final report follows a heartbeat sent after that exit (as a real
    agent's heartbeats go on while its job runs), so that the server has
    heard the node past the exit whatever the machine's load did to the
    heartbeat thread: billing stops at the exit, not short of it."""

    def report(self, lease, state, *args, **kw):
        if state != "LEASE_STATE_RUNNING" and "exitedAtUs" not in kw \
                and str(lease["id"]) in EXITED:
            kw["exitedAtUs"] = str(EXITED[str(lease["id"])])
            ok(self.heartbeat(), "Heartbeat before the final report")
        return NodeAgent.report(self, lease, state, *args, **kw)


def audit(c):
    b = ok(c.admin("AuditLedger", {}))
    return b


class LedgerCase(ItCase):
    @classmethod
    def setUpClass(cls):
        c = common._clusters[__name__]
        cls.op, cls.optok = c.new_operator(node_limit=100)
        cls.agents = []

    def setUp(self):
        super().setUp()
        # a tenant per test: no other test's holds move its balances
        self.tenant, self.ttok = self.c.new_tenant(funds_micros=10**12)

    @classmethod
    def tearDownClass(cls):
        for ag in cls.agents:
            ag.stop_heartbeats()

    def node(self, gpus=1, token=None, model="RTX-3090-24GB", region="eu-west", **kw):
        pool = self.c.unique("pool")
        req = node_req(self.c.unique("node"), gpus=gpus, region=region, price_micros=PRICE,
                       labels={"pool": pool}, **kw)
        for g in req["gpus"]:
            g["model"] = model
        ag = LedgerAgent.register(self.c, token or self.optok, req)
        ag.pool = pool
        ag.start_heartbeats(0.25)
        self.agents.append(ag)
        return ag

    def run_lease(self, ag, gpus=1, tok=None, **spec):
        """Submits a job for ag's pool and takes its lease RUNNING."""
        job = submit(self.c, tok or self.ttok,
                     spec=job_spec(gpus=gpus, labelSelector={"pool": ag.pool}, **spec))
        lease = ag.acquire_lease(within=20)["lease"]
        self.assertEqual(lease["jobId"], job["id"])
        self.assertOk(ag.report(lease, "LEASE_STATE_RUNNING"))
        fee = q1(self.c, "SELECT fee_ppm FROM leases WHERE id = %s" % lease["id"])
        self.assertEqual(fee, str(FEE_PPM), "fee locked into the lease")
        return job, lease

    def check_money(self, lease_id, gpus, seconds, op_id=None):
        """The settled lease was billed by the rule for a run of `seconds`
        (+ the part of a second ran_for adds) and moved exactly what the
        hand computation says for the seconds billed. Returns (gross, fee)."""
        wait_settled(self.c, lease_id)
        started, billed_end, gpu_seconds = (int(x) for x in self.c.psql(
            "SELECT started_at_us, billed_end_us, billed_gpu_seconds FROM leases"
            " WHERE id = %s" % lease_id)[0])
        # whole seconds from the start to the billed end, per GPU
        secs = (billed_end - started) // 1000000
        self.assertEqual(gpu_seconds, gpus * secs,
                         "billed %d GPU-s, the rule says %d x %d" % (gpu_seconds, gpus, secs))
        exited = EXITED.get(str(lease_id))
        if exited is not None:
            # billed for the true run (up to the recorded exit), and never
            # past it by more than one heartbeat interval
            self.assertGreaterEqual(billed_end, exited, "billed short of the exit")
            self.assertLessEqual(billed_end, exited + HB_INTERVAL_US,
                                 "billed past the exit by more than one heartbeat interval")
        # bounds from the recorded times: at least the whole seconds run,
        # at most one heartbeat interval more (rounded up to a second)
        self.assertGreaterEqual(secs, seconds)
        self.assertLessEqual(secs, seconds + 1)
        gross = 1000 * gpus * secs
        fee = gross * FEE_PPM // 1000000
        hold = PRICE * gpus  # one hour max duration
        m = lease_money(self.c, lease_id)
        self.assertEqual(m.get(2, 0) - hold, gross, "hold + its postings: %s" % m)
        self.assertEqual(m.get(3, 0), gross - fee, "operator's part: %s" % m)
        self.assertEqual(m.get(4, 0), fee, "platform fee: %s" % m)
        self.assertEqual(m.get(5, 0), hold - gross, "released rest: %s" % m)
        row = self.c.psql("SELECT posted_micros, fee_posted_micros, billed_gpu_seconds,"
                          " hold_micros FROM leases WHERE id = %s" % lease_id)[0]
        self.assertEqual([int(x) for x in row], [gross, fee, gpus * seconds, hold])
        return gross, fee


class FixtureTest(LedgerCase):
    """Each way a lease ends, with hand-computed amounts."""

    def test_success_two_gpus_100s(self):
        ag = self.node(gpus=2)
        bal0 = account(self.c, 1, self.tenant["id"])
        op0 = account(self.c, 2, self.op["id"])
        job, lease = self.run_lease(ag, gpus=2)
        # the hold, as taken (the sweep may already have posted part of it
        # out of the tenant's pending debits: it meters as the lease runs)
        self.assertEqual(q1(self.c, "SELECT hold_micros FROM leases WHERE id = %s" % lease["id"]),
                         "7200000", "hold: 2 GPUs x 1 h x 3.6 USD")
        self.assertEqual(q1(self.c, "SELECT amount_micros FROM ledger_transfers"
                                    " WHERE idempotency_id = 'lease:%s:hold'" % lease["id"]),
                         "7200000")
        ran_for(self.c, lease["id"], 100)
        self.assertOk(ag.report(lease, "LEASE_STATE_SUCCEEDED"))
        gross, fee = self.check_money(lease["id"], 2, 100)
        self.assertIn((gross, fee), ((200000, 20000), (202000, 20200)))  # 100 s (or 101)
        bal1 = account(self.c, 1, self.tenant["id"])
        self.assertEqual(bal0[0] - bal1[0], gross, "tenant paid 0.20 USD")
        self.assertEqual(bal1[1], bal0[1], "the hold is gone")
        op1 = account(self.c, 2, self.op["id"])
        self.assertEqual(op1[0] - op0[0], gross - fee)
        j = wait_job_state(self.c, self.ttok, job["id"], "JOB_STATE_SUCCEEDED")
        self.assertEqual(j.get("costMicros"), str(gross), j)

    def test_failure_exit_code_50s(self):
        ag = self.node()
        job, lease = self.run_lease(ag)
        ran_for(self.c, lease["id"], 50)
        self.assertOk(ag.report(lease, "LEASE_STATE_FAILED", exit_code=3, message="boom"))
        self.assertIn(self.check_money(lease["id"], 1, 50), ((50000, 5000), (51000, 5100)))
        wait_job_state(self.c, self.ttok, job["id"], "JOB_STATE_FAILED")

    def test_cancel_running_30s(self):
        ag = self.node()
        job, lease = self.run_lease(ag)
        ran_for(self.c, lease["id"], 30)
        self.assertOk(self.c.call("JobService", "CancelJob", {"jobId": job["id"]},
                                  token=self.ttok))
        # the agent stops the process and reports; the lease ends CANCELLED
        r = self.assertOk(ag.report(lease, "LEASE_STATE_FAILED", exit_code=143))
        self.assertEqual(r["lease"]["state"], "LEASE_STATE_CANCELLED")
        self.assertIn(self.check_money(lease["id"], 1, 30), ((30000, 3000), (31000, 3100)))
        wait_job_state(self.c, self.ttok, job["id"], "JOB_STATE_CANCELLED")

    def test_cancel_before_pickup_releases_everything(self):
        ag = self.node()
        ag.stop_heartbeats()
        job = submit(self.c, self.ttok, spec=job_spec(labelSelector={"pool": ag.pool}))
        lid = common.wait_for(lambda: q1(self.c, "SELECT id FROM leases WHERE job_id = %s"
                                         % job["id"]), 10, 0.1, "placement")
        self.assertOk(self.c.call("JobService", "CancelJob", {"jobId": job["id"]},
                                  token=self.ttok))
        wait_settled(self.c, lid)
        m = lease_money(self.c, lid)
        self.assertEqual(m, {2: PRICE, 5: PRICE}, "hold, then all of it released")

    def test_preempted_20s(self):
        ag = self.node()
        job, lease = self.run_lease(ag)
        ran_for(self.c, lease["id"], 20)
        # what the leader writes when it preempts (schedloop write_preempt)
        self.c.psql("UPDATE leases SET state = 4, stop_kind = 2, stop_deadline_us = %d,"
                    " stop_reason = 'preempted for job 0' WHERE id = %s"
                    % (common.now_us() + 30000000, lease["id"]))
        r = self.assertOk(ag.report(lease, "LEASE_STATE_FAILED", exit_code=143))
        self.assertEqual(r["lease"]["state"], "LEASE_STATE_PREEMPTED")
        self.assertIn(self.check_money(lease["id"], 1, 20), ((20000, 2000), (21000, 2100)))
        # re-queued; the next attempt takes a new hold: end it
        ok(self.c.call("JobService", "CancelJob", {"jobId": job["id"]}, token=self.ttok))

    def test_node_lost_paid_to_last_heartbeat(self):
        ag = self.node()
        job, lease = self.run_lease(ag)
        ag.stop_heartbeats()
        hb = int(q1(self.c, "SELECT last_heartbeat_us FROM nodes WHERE id = %s" % ag.id))
        # the agent started 250 s before its last heartbeat, then vanished
        self.c.psql("UPDATE leases SET started_at_us = %d WHERE id = %s"
                    % (hb - 250 * 1000000 - 300000, lease["id"]))
        common.wait_for(lambda: q1(self.c, "SELECT state FROM leases WHERE id = %s"
                                   % lease["id"]) == "7", 15, 0.1, "the lease to expire")
        self.assertEqual(q1(self.c, "SELECT billed_end_us FROM leases WHERE id = %s"
                            % lease["id"]), str(hb))
        # billed to the last heartbeat exactly: 250 whole seconds
        self.assertEqual(self.check_money(lease["id"], 1, 250), (250000, 25000))
        ok(self.c.call("JobService", "CancelJob", {"jobId": job["id"]}, token=self.ttok))

    def test_long_lease_paid_as_it_goes(self):
        ag = self.node()
        op0 = account(self.c, 2, self.op["id"])[0]
        job, lease = self.run_lease(ag)
        ran_for(self.c, lease["id"], 500, meter=True)
        # the settle sweep meters it every second while it runs
        common.wait_for(lambda: lease_money(self.c, lease["id"]).get(3, 0) >= 450000, 10, 0.2,
                        "interim settlement")
        self.assertEqual(q1(self.c, "SELECT state FROM leases WHERE id = %s" % lease["id"]),
                         "3", "still running")
        self.assertGreaterEqual(account(self.c, 2, self.op["id"])[0] - op0, 450000)
        j = self.assertOk(self.c.call("JobService", "GetJob", {"jobId": job["id"]},
                                      token=self.ttok))["job"]
        self.assertGreaterEqual(int(j.get("costMicros", "0")), 500000)
        self.assertOk(ag.report(lease, "LEASE_STATE_SUCCEEDED"))
        wait_settled(self.c, lease["id"])
        secs = int(q1(self.c, "SELECT (billed_end_us - started_at_us) / 1000000 FROM leases"
                      " WHERE id = %s" % lease["id"]))
        self.assertGreaterEqual(secs, 500)
        self.check_money(lease["id"], 1, secs)
        steps = int(q1(self.c, "SELECT settle_seq FROM leases WHERE id = %s" % lease["id"]))
        self.assertGreaterEqual(steps, 2, "posted in more than one step")

    def test_duplicates_never_double_bill(self):
        ag = self.node()
        job, lease = self.run_lease(ag)
        ran_for(self.c, lease["id"], 10)
        self.assertOk(ag.report(lease, "LEASE_STATE_SUCCEEDED", seq=5))
        self.check_money(lease["id"], 1, 10)
        n = lease_transfer_count(self.c, lease["id"])
        bal = account(self.c, 1, self.tenant["id"])
        # the same report, later seqs; heartbeats naming it
        for seq, st in ((5, "LEASE_STATE_SUCCEEDED"), (6, "LEASE_STATE_SUCCEEDED"),
                        (7, "LEASE_STATE_FAILED")):
            self.assertOk(ag.report(lease, st, seq=seq))
        # an older one is out of order: refused, changes nothing
        self.assertEqual(ag.report(lease, "LEASE_STATE_RUNNING", seq=2).code,
                         "failed_precondition")
        ag.running.append(lease["id"])
        for _ in range(3):
            self.assertOk(ag.heartbeat())
        ag.running.remove(lease["id"])
        # settlement run again, by hand, several times, whole and by shards
        for _ in range(3):
            self.c.psql("SELECT * FROM gm_ledger_sweep(%d, %d, 1000, 30000000)"
                        % (common.now_us(), common.now_us()))
        for shard in range(3):
            self.c.psql("SELECT * FROM gm_ledger_sweep(%d, %d, 1000, 30000000, 0, %d, 3)"
                        % (common.now_us(), common.now_us(), shard))
        for shard, shards in ((3, 3), (-1, 2), (0, 0)):
            with self.assertRaises(common.HarnessError):
                self.c.psql("SELECT * FROM gm_ledger_sweep(%d, %d, 1000, 30000000, 0, %d, %d)"
                            % (common.now_us(), common.now_us(), shard, shards))
        time.sleep(0.5)
        self.assertEqual(lease_transfer_count(self.c, lease["id"]), n)
        self.assertEqual(account(self.c, 1, self.tenant["id"]), bal)
        self.check_money(lease["id"], 1, 10)
        # a transfer id can never be used twice
        with self.assertRaises(common.HarnessError):
            self.c.psql("INSERT INTO ledger_transfers (idempotency_id, debit_account_id,"
                        " credit_account_id, amount_micros, kind, state, created_at_us)"
                        " VALUES ('lease:%s:release', 1, 2, 1, 7, 2, 0)" % lease["id"])
        # and ledger rows never change
        with self.assertRaises(common.HarnessError):
            self.c.psql("UPDATE ledger_transfers SET amount_micros = 1 WHERE lease_id = %s"
                        % lease["id"])

    def test_zz_audit_clean(self):
        common.wait_for(lambda: q1(self.c, "SELECT count(*) FROM leases WHERE state > 4"
                                   " AND NOT ledger_settled") == "0", 15, 0.2, "settlement")
        b = audit(self.c)
        self.assertIs(b.get("ok"), True, b)
        self.assertGreater(int(b.get("transfersChecked", "0")), 10)


class MoneyTest(LedgerCase):
    """Admission, holds at placement, top-ups and payouts."""

    def test_submit_refused_when_unaffordable(self):
        ag = self.node()
        t, tok = self.c.new_tenant(funds_micros=0)
        before = self.c.count("jobs")
        r = self.c.call("JobService", "SubmitJob", common.submit_req(
            self.c.unique("poor"), job_spec(labelSelector={"pool": ag.pool},
                                            maxPricePerGpuHourMicros=str(PRICE))), token=tok)
        self.assertError(r, "failed_precondition", "spec")
        # the worst case in currency, as people read money (docs/cli.md)
        self.assertIn("worst case costs 3.60 ", r.message)
        self.assertNotIn("micros", r.message.replace("Micros", ""))
        self.assertUnchanged("jobs", before)
        # exactly the worst case: admitted
        ok(self.c.admin("TopUpTenant", {"tenantId": t["id"], "amountMicros": str(PRICE),
                                        "idempotencyId": self.c.unique("pay")}))
        submit(self.c, tok, spec=job_spec(labelSelector={"pool": ag.pool},
                                          maxPricePerGpuHourMicros=str(PRICE)))

    def test_credit_limit_counts(self):
        ag = self.node()
        t, tok = self.c.new_tenant(funds_micros=0, creditLimitMicros=str(PRICE))
        job = submit(self.c, tok, spec=job_spec(labelSelector={"pool": ag.pool},
                                                maxPricePerGpuHourMicros=str(PRICE)))
        lease = ag.acquire_lease(within=20)["lease"]
        self.assertEqual(lease["jobId"], job["id"])
        self.assertEqual(account(self.c, 1, t["id"]), (0, PRICE, 0))
        # lowering the limit under what is held is refused by the record
        r = self.c.admin("UpdateTenant", {"tenant": {"id": t["id"], "creditLimitMicros": "0"},
                                          "updateMask": ["credit_limit_micros"]})
        self.assertError(r, "failed_precondition")
        self.assertOk(ag.report(lease, "LEASE_STATE_RUNNING"))
        ran_for(self.c, lease["id"], 7)
        self.assertOk(ag.report(lease, "LEASE_STATE_SUCCEEDED"))
        gross, _ = self.check_money(lease["id"], 1, 7)
        self.assertEqual(account(self.c, 1, t["id"]), (-gross, 0, 0), "on credit")

    def test_hold_at_placement_fails_what_cannot_be_covered(self):
        ag = self.node(gpus=2)
        t, tok = self.c.new_tenant(funds_micros=PRICE)
        spec = job_spec(labelSelector={"pool": ag.pool}, maxPricePerGpuHourMicros=str(PRICE))
        # both admitted (each alone is affordable); only one hold fits
        a = submit(self.c, tok, spec=spec)
        b = submit(self.c, tok, spec=spec)
        done = {}

        def states():
            for j in (a, b):
                done[j["id"]] = common.get_job(self.c, tok, j["id"])
            return sorted(x.get("state") for x in done.values()) == \
                ["JOB_STATE_FAILED", "JOB_STATE_RUNNING"]
        common.wait_for(states, 15, 0.2, "one placed, one failed")
        failed = [x for x in done.values() if x["state"] == "JOB_STATE_FAILED"][0]
        self.assertEqual(failed["failure"]["reason"], "FAILURE_REASON_INSUFFICIENT_FUNDS",
                         failed)
        self.assertEqual(account(self.c, 1, t["id"]), (PRICE, PRICE, 0))

    def test_top_up_idempotent(self):
        t = self.c.create_tenant()
        idem = self.c.unique("topup")
        req = {"tenantId": t["id"], "amountMicros": "5000000", "idempotencyId": idem,
               "comment": "invoice 7"}
        b = self.assertOk(self.c.admin("TopUpTenant", req))
        self.assertFalse(b.get("duplicate", False))
        self.assertEqual(b["transfer"]["kind"], "TRANSFER_KIND_TOP_UP")
        self.assertEqual(b["transfer"]["amountMicros"], "5000000")
        self.assertEqual(b["account"]["balanceMicros"], "5000000")
        again = self.assertOk(self.c.admin("TopUpTenant", req))
        self.assertIs(again.get("duplicate"), True)
        self.assertEqual(again["transfer"]["id"], b["transfer"]["id"])
        self.assertEqual(again["account"]["balanceMicros"], "5000000")
        r = self.c.admin("TopUpTenant", dict(req, amountMicros="6000000"))
        self.assertError(r, "failed_precondition", "idempotency_id")
        self.assertEqual(account(self.c, 1, t["id"])[0], 5000000)

    def test_top_up_bad_input_writes_nothing(self):
        t = self.c.create_tenant()
        good = {"tenantId": t["id"], "amountMicros": "100", "idempotencyId": "x1"}
        before = self.c.count("ledger_transfers")
        for field, bad in (("tenant_id", {"tenantId": "0"}), ("amount_micros", {"amountMicros": "0"}),
                           ("amount_micros", {"amountMicros": "-5"}),
                           ("idempotency_id", {"idempotencyId": ""}),
                           ("idempotency_id", {"idempotencyId": "has space"}),
                           ("comment", {"comment": "x" * 600})):
            r = self.c.admin("TopUpTenant", dict(good, **bad))
            self.assertError(r, "invalid_argument", field, msg=str(bad))
        r = self.c.admin("TopUpTenant", dict(good, tenantId="99999999"))
        self.assertError(r, "not_found", "tenant_id")
        self.assertUnchanged("ledger_transfers", before)

    def test_payout(self):
        op, optok = self.c.new_operator()
        ag = self.node(token=optok)
        job, lease = self.run_lease(ag)
        ran_for(self.c, lease["id"], 100)
        self.assertOk(ag.report(lease, "LEASE_STATE_SUCCEEDED"))
        gross, fee = self.check_money(lease["id"], 1, 100)
        earned = gross - fee  # 90,000 for 100 s
        self.assertEqual(account(self.c, 2, op["id"])[0], earned)
        before = self.c.count("ledger_transfers")
        r = self.c.admin("PayoutOperator", {"operatorId": op["id"],
                                            "amountMicros": str(earned + 1),
                                            "idempotencyId": self.c.unique("po")})
        self.assertError(r, "failed_precondition", "amount_micros")
        for field, bad in (("operator_id", {"operatorId": "0"}), ("amount_micros", {"amountMicros": "0"}),
                           ("idempotency_id", {"idempotencyId": ""})):
            req = dict({"operatorId": op["id"], "amountMicros": "10", "idempotencyId": "p"}, **bad)
            self.assertError(self.c.admin("PayoutOperator", req), "invalid_argument", field)
        self.assertUnchanged("ledger_transfers", before)
        req = {"operatorId": op["id"], "amountMicros": "60000",
               "idempotencyId": self.c.unique("po"), "reference": "SEPA-1"}
        b = self.assertOk(self.c.admin("PayoutOperator", req))
        self.assertEqual(b["account"]["balanceMicros"], str(earned - 60000))
        self.assertEqual(b["transfer"]["kind"], "TRANSFER_KIND_PAYOUT")
        self.assertIs(self.assertOk(self.c.admin("PayoutOperator", req)).get("duplicate"), True)
        self.assertEqual(account(self.c, 2, op["id"])[0], earned - 60000)
        e = self.assertOk(self.c.call("NodeService", "GetEarnings", {}, token=optok))
        self.assertEqual(e["operatorRecord"]["earningsMicros"], str(earned - 60000))
        self.assertEqual(e["operatorRecord"]["paidOutMicros"], "60000")
        self.assertEqual(e["totals"]["operatorMicros"], str(earned))
        self.assertEqual(e["totals"]["paidOutMicros"], "60000")

    def test_list_transfers(self):
        t = self.c.create_tenant()
        for i in range(3):
            ok(self.c.admin("TopUpTenant", {"tenantId": t["id"], "amountMicros": str(i + 1),
                                            "idempotencyId": self.c.unique("lt")}))
        acct = q1(self.c, "SELECT id FROM ledger_accounts WHERE kind = 1 AND owner_id = %s"
                  % t["id"])
        b = self.assertOk(self.c.admin("ListTransfers", {"accountId": acct, "pageSize": 2}))
        self.assertEqual([x["amountMicros"] for x in b["transfers"]], ["3", "2"])
        b2 = self.assertOk(self.c.admin("ListTransfers", {"accountId": acct, "pageSize": 2,
                                                          "pageToken": b["nextPageToken"]}))
        self.assertEqual([x["amountMicros"] for x in b2["transfers"]], ["1"])
        b3 = self.assertOk(self.c.admin("ListTransfers", {"kinds": ["TRANSFER_KIND_PAYOUT",
                                                                    "TRANSFER_KIND_FEE"]}))
        self.assertTrue(all(x["kind"] in ("TRANSFER_KIND_PAYOUT", "TRANSFER_KIND_FEE")
                            for x in b3.get("transfers", [])))
        self.assertError(self.c.admin("ListTransfers", {"pageSize": 5000}), "invalid_argument",
                         "page_size")
        self.assertError(self.c.admin("ListTransfers", {"pageToken": "zz"}), "invalid_argument",
                         "page_token")


class AuthzTest(LedgerCase):
    def test_roles(self):
        other, other_tok = self.c.new_tenant()
        op2, op2tok = self.c.new_operator()
        admin_calls = [("TopUpTenant", {"tenantId": self.tenant["id"], "amountMicros": "1",
                                        "idempotencyId": "nope"}),
                       ("PayoutOperator", {"operatorId": self.op["id"], "amountMicros": "1",
                                           "idempotencyId": "nope"}),
                       ("AuditLedger", {}), ("ListTransfers", {}),
                       ("GetUsageReport", {"window": {"startUs": "0"}}),
                       ("GetRevenueReport", {"window": {"startUs": "0"}})]
        for tok in (self.ttok, self.optok):
            for m, body in admin_calls:
                self.assertError(self.c.call("AdminService", m, body, token=tok),
                                 "permission_denied", msg=m)
        self.assertError(self.c.call("AdminService", "AuditLedger", {}, token=None),
                         "unauthenticated")
        # tenants: their own spend only; operators: their own earnings only
        self.assertError(self.c.call("JobService", "GetSpend", {"tenantId": other["id"]},
                                     token=self.ttok), "permission_denied", "tenant_id")
        s = self.assertOk(self.c.call("JobService", "GetSpend", {}, token=other_tok))
        self.assertEqual(s["tenant"]["id"], other["id"])
        self.assertError(self.c.call("JobService", "GetSpend", {}, token=self.optok),
                         "permission_denied")
        self.assertError(self.c.call("NodeService", "GetEarnings", {"operatorId": self.op["id"]},
                                     token=op2tok), "permission_denied", "operator_id")
        self.assertError(self.c.call("NodeService", "GetEarnings", {}, token=self.ttok),
                         "permission_denied")
        e = self.assertOk(self.c.call("NodeService", "GetEarnings", {}, token=op2tok))
        self.assertEqual(e["operatorRecord"]["id"], op2["id"])
        # admins name whom
        self.assertError(self.c.call("JobService", "GetSpend", {}, token=self.c.admin_token),
                         "invalid_argument", "tenant_id")
        self.assertOk(self.c.call("JobService", "GetSpend", {"tenantId": other["id"]},
                                  token=self.c.admin_token))
        self.assertError(self.c.call("JobService", "GetSpend", {"tenantId": "77777777"},
                                     token=self.c.admin_token), "not_found", "tenant_id")

    def test_report_bad_windows(self):
        for m in ("GetUsageReport", "GetRevenueReport"):
            self.assertError(self.c.admin(m, {}), "invalid_argument", "window", msg=m)
            self.assertError(self.c.admin(m, {"window": {"startUs": "100", "endUs": "50"}}),
                             "invalid_argument", "window", msg=m)
            self.assertError(self.c.admin(m, {"window": {"startUs": "-1"}}),
                             "invalid_argument", "window", msg=m)
        self.assertError(self.c.admin("AuditLedger", {"maxViolations": 1000000}),
                         "invalid_argument", "max_violations")


class AuditTest(LedgerCase):
    def test_a_transfer_to_an_unknown_account_is_a_violation(self):
        # nothing in gpumatchd writes one (the writers take account ids from
        # ledger_accounts); written by hand here, then removed again
        c = self.c
        tid = c.psql_value(
            "INSERT INTO ledger_transfers (idempotency_id, debit_account_id, credit_account_id,"
            " amount_micros, kind, state, created_at_us) VALUES"
            " ('it:bogus:%d', 1, 987654321, 5, 6, 1, 0) RETURNING id" % os.getpid())
        try:
            b = audit(c)
            self.assertFalse(b.get("ok"), b)
            v = [x for x in b.get("violations", []) if x.get("transferId") == tid]
            self.assertEqual(len(v), 1, b)
            self.assertEqual(v[0]["kind"], "VIOLATION_KIND_UNBALANCED_TRANSFER")
            self.assertIn("does not exist", v[0]["message"])
        finally:
            c.psql("ALTER TABLE ledger_transfers DISABLE TRIGGER ledger_transfers_immutable;"
                   " DELETE FROM ledger_transfers WHERE id = %s;"
                   " ALTER TABLE ledger_transfers ENABLE TRIGGER ledger_transfers_immutable"
                   % tid)
        self.assertTrue(audit(c).get("ok"), "audit clean again")


class ReportTest(LedgerCase):
    """A small fixed scenario: one operator with one 2-GPU H100 node in its
    own region, one tenant; a 2-GPU job runs 100 s, a 1-GPU job 40 s."""

    def test_reports_match_hand_computed(self):
        c = self.c
        op, optok = c.new_operator()
        t, ttok = c.new_tenant(funds_micros=50000000)
        region = c.unique("rep-region")
        t0 = common.now_us()
        ag = self.node(gpus=2, token=optok, model="H100-SXM5-80GB", region=region)
        # the node has been up since 1000 s before this test
        c.psql("UPDATE node_state_log SET at_us = at_us - 1000000000 WHERE node_id = %s" % ag.id)
        _, l1 = self.run_lease(ag, gpus=2, tok=ttok)
        ran_for(c, l1["id"], 100)
        self.assertOk(ag.report(l1, "LEASE_STATE_SUCCEEDED"))
        _, l2 = self.run_lease(ag, gpus=1, tok=ttok)
        ran_for(c, l2["id"], 40)
        self.assertOk(ag.report(l2, "LEASE_STATE_FAILED", exit_code=1))
        # what the two leases were billed, each by the rule (200 + 40 GPU-s,
        # or a second more each): the reports must add exactly these up
        g1, f1 = self.check_money(l1["id"], 2, 100)
        g2, f2 = self.check_money(l2["id"], 1, 40)
        gross, fee = g1 + g2, f1 + f2
        GROSS, OPER, FEE, GPUS = str(gross), str(gross - fee), str(fee), str(gross // 1000)
        t1 = common.now_us()
        win = {"startUs": str(t0 - 2000 * 1000000), "endUs": str(t1)}

        rev = self.assertOk(c.admin("GetRevenueReport", {"window": win}))
        node = [n for n in rev.get("nodes", []) if n["nodeId"] == ag.id]
        self.assertEqual(len(node), 1, rev)
        self.assertEqual((node[0]["grossMicros"], node[0]["operatorMicros"],
                          node[0]["platformFeeMicros"], node[0]["gpuSeconds"]),
                         (GROSS, OPER, FEE, GPUS))
        opr = [o for o in rev["operators"] if o["operatorId"] == op["id"]][0]
        self.assertEqual((opr["grossMicros"], opr["operatorMicros"], opr["platformFeeMicros"]),
                         (GROSS, OPER, FEE))
        ten = [x for x in rev["tenants"] if x["tenantId"] == t["id"]][0]
        self.assertEqual((ten["spendMicros"], ten["toppedUpMicros"], ten["gpuSeconds"],
                          ten["jobs"]), (GROSS, "50000000", GPUS, 2))
        # totals are the sums of the parts
        self.assertEqual(int(rev["grossMicros"]),
                         sum(int(o.get("grossMicros", "0")) for o in rev["operators"]))
        self.assertEqual(int(rev["grossMicros"]),
                         int(rev["operatorMicros"]) + int(rev["platformFeeMicros"]))

        use = self.assertOk(c.admin("GetUsageReport", {"window": win, "region": region}))
        self.assertEqual([n["nodeId"] for n in use["nodes"]], [ag.id])
        n = use["nodes"][0]
        self.assertEqual((n["gpuCount"], n["gpuSecondsUsed"]), (2, GPUS))
        ready = int(q1(c, "SELECT min(at_us) FROM node_state_log WHERE node_id = %s"
                       " AND state = 2" % ag.id))
        avail = 2 * ((t1 - ready) // 1000000)
        self.assertAlmostEqual(int(n["gpuSecondsAvailable"]), avail, delta=4)
        self.assertEqual(n["utilizationPpm"], int(GPUS) * 1000000 // int(n["gpuSecondsAvailable"]))
        self.assertEqual(use["gpuModels"][0]["gpuModel"], "H100-SXM5-80GB")
        self.assertEqual(use["gpuModels"][0]["gpuSecondsUsed"], GPUS)
        self.assertEqual(use["sold"], [{"gpuModel": "H100-SXM5-80GB", "region": region,
                                        "gpuSeconds": GPUS, "revenueMicros": GROSS}])

        sp = self.assertOk(c.call("JobService", "GetSpend", {"window": win}, token=ttok))
        self.assertEqual((sp["spend"]["spendMicros"], sp["spend"]["gpuSeconds"]),
                         (GROSS, GPUS))
        self.assertEqual(sp["account"]["balanceMicros"], str(50000000 - gross))
        self.assertEqual(sp["tenant"]["balanceMicros"], str(50000000 - gross))
        e = self.assertOk(c.call("NodeService", "GetEarnings", {"window": win}, token=optok))
        self.assertEqual((e["totals"]["grossMicros"], e["totals"]["operatorMicros"]),
                         (GROSS, OPER))
        self.assertEqual(e["operatorRecord"]["earningsMicros"], OPER)
        self.assertEqual([x["nodeId"] for x in e["nodes"]], [ag.id])
        self.assertEqual(e["utilization"][0]["gpuSecondsUsed"], GPUS)
        # a window before it all: nothing
        old = self.assertOk(c.admin("GetRevenueReport", {"window": {"startUs": "1",
                                                                    "endUs": "2"}}))
        self.assertNotIn("nodes", old)
        # and on /metrics
        m = c.http("GET", "/metrics")[2].decode()
        self.assertIn("gpumatch_ledger_postings_total", m)
        self.assertIn("gpumatch_ledger_gross_micros_total", m)
