"""The authorization matrix, generated from the contract: every RPC of the
three services (read from the service descriptors) must have a row below
saying which roles may call it and which field, if any, names an object
owned by the caller. Each RPC is then called with no token, a garbage
token, a revoked token, an expired token, a disabled tenant's and a disabled
operator's token, and each role's token; refusals must carry the right code
and change no row (a digest of every table a call could touch, the ledger's
background sweep excluded). For every RPC that names an object, the owner's
call is not refused for ownership, and a non-owner of the same role gets the
same answer for "exists but not yours" as for "does not exist". A new RPC
without a row fails test_every_rpc_has_a_row."""

import re
import time

import common
from common import ItCase, NodeAgent, job_spec, node_req, submit_req
from cluster import proto_module

ALL = ("tenant", "operator", "admin")
JOB = ("tenant", "admin")
NODE = ("operator", "admin")
ADMIN = ("admin",)

# (service, method) -> (roles allowed, owned-object field or None)
MATRIX = {
    ("JobService", "SubmitJob"): (JOB, None),
    ("JobService", "GetJob"): (JOB, "job_id"),
    ("JobService", "ListJobs"): (JOB, None),
    ("JobService", "CancelJob"): (JOB, "job_id"),
    ("JobService", "ExplainJob"): (JOB, "job_id"),
    ("JobService", "GetSpend"): (JOB, None),
    ("JobService", "GetSpendSeries"): (JOB, None),
    # tenants their jobs', operators their nodes' attempts, admins any
    ("JobService", "GetJobLogs"): (ALL, "job_id"),
    ("NodeService", "GetNodeSeries"): (NODE, "node_id"),
    ("NodeService", "RegisterNode"): (NODE, None),
    ("NodeService", "GetNode"): (NODE, "node_id"),
    ("NodeService", "ListNodes"): (NODE, None),
    ("NodeService", "RequestChallenge"): (NODE, "node_id"),
    ("NodeService", "SubmitProbe"): (NODE, "node_id"),
    ("NodeService", "Heartbeat"): (NODE, "node_id"),
    ("NodeService", "AcquireLease"): (NODE, "node_id"),
    ("NodeService", "ConfirmLease"): (NODE, "node_id"),
    ("NodeService", "ReportLease"): (NODE, "node_id"),
    ("NodeService", "AppendLeaseLogs"): (NODE, "node_id"),
    ("NodeService", "DrainNode"): (NODE, "node_id"),
    ("NodeService", "UndrainNode"): (NODE, "node_id"),
    ("NodeService", "RetireNode"): (NODE, "node_id"),
    ("NodeService", "GetEarnings"): (NODE, None),
}
for _m in ("GetPolicy", "SetPolicy", "ListPolicies", "ListPolicyAudit", "SimulatePolicy",
           "CreateTenant", "GetTenant", "ListTenants", "UpdateTenant", "DisableTenant",
           "EnableTenant", "TopUpTenant", "CreateOperator", "GetOperator", "ListOperators",
           "UpdateOperator", "DisableOperator", "EnableOperator", "PayoutOperator",
           "CordonNode", "UncordonNode", "CreateToken", "ListTokens", "RevokeToken",
           "GetUsageReport", "GetRevenueReport", "AuditLedger", "ListTransfers", "ExportTrace",
           "ListLearnedSpeeds", "GetFleetSeries", "GetFleetSummary"):
    MATRIX[("AdminService", _m)] = (ADMIN, None)

SERVICES = {"JobService": "job_service", "NodeService": "node_service",
            "AdminService": "admin_service"}
# every table a refused call could touch; the ledger's tables are left out
# (its background sweep moves rows on its own), api_tokens by count (use
# stamps it)
TABLES = ("tenants", "nodes", "gpus", "jobs", "leases", "policies", "probe_runs",
          "policy_audit")

REFUSED_AUTH = ("unauthenticated",)
REFUSED_DISABLED = ("unauthenticated", "permission_denied")


# its own meson test: `meson test hostile` (tests/integration/meson.build)
OWN_SUITE = "hostile"


def setUpModule():
    # nodes registered here stop heartbeating: the janitor must not mark
    # them lost (a row change of its own) while the matrix runs
    common.setup_module(__name__, ["--heartbeat_timeout_ms=3600000"])


def tearDownModule():
    common.teardown_module(__name__)


def contract_rpcs():
    out = []
    for svc, fname in SERVICES.items():
        sd = proto_module(fname).DESCRIPTOR.services_by_name[svc]
        out += [(svc, m.name) for m in sd.methods]
    return out


class AuthzMatrixTest(ItCase):
    @classmethod
    def setUpClass(cls):
        c = common._clusters[__name__]
        cls.t_a, cls.tok_a = c.new_tenant()
        cls.t_b, cls.tok_b = c.new_tenant()
        cls.o_x, cls.tok_x = c.new_operator()
        cls.o_y, cls.tok_y = c.new_operator()
        cls.node_x = NodeAgent.register(c, cls.tok_x, node_req(c.unique("nx"), gpus=1)).id
        # the owner's RetireNode retires for good: a node of its own
        cls.node_x_retire = NodeAgent.register(c, cls.tok_x,
                                               node_req(c.unique("nxr"), gpus=1)).id
        NodeAgent.register(c, cls.tok_y, node_req(c.unique("ny"), gpus=1))
        job = ok_body(c.call("JobService", "SubmitJob", submit_req(c.unique("k"), job_spec()),
                             token=cls.tok_a))
        cls.job_a = job["job"]["id"]
        # a revoked token, an expired one, a disabled tenant's and operator's
        cls.tok_revoked, tk = c.create_token("ROLE_TENANT", tenant_id=cls.t_a["id"])
        ok_body(c.admin("RevokeToken", {"tokenId": str(tk["id"])}))
        exp = ok_body(c.admin("CreateToken", {
            "role": "ROLE_TENANT", "tenantId": str(cls.t_a["id"]), "name": c.unique("exp"),
            "expiresAtUs": str(int(time.time() * 1e6) + 1500000)}))
        cls.tok_expired = exp["secret"]
        t_c, cls.tok_disabled_t = c.new_tenant()
        ok_body(c.admin("DisableTenant", {"tenantId": str(t_c["id"])}))
        o_z, cls.tok_disabled_o = c.new_operator()
        ok_body(c.admin("DisableOperator", {"operatorId": str(o_z["id"])}))
        time.sleep(2.0)  # the expired token's expiry passes (a state, not a speed)
        cls.role_tok = {"tenant": cls.tok_a, "operator": cls.tok_x, "admin": c.admin_token}

    def digest(self):
        sql = "SELECT " + ", ".join(
            "(SELECT md5(coalesce(string_agg(x::text, ',' ORDER BY x::text), '')) FROM %s x)"
            % t for t in TABLES) + ", (SELECT count(*) FROM api_tokens)" \
            ", (SELECT count(*) FROM operators)"
        return self.c.psql(sql)[0]

    def test_every_rpc_has_a_row(self):
        rpcs = contract_rpcs()
        self.assertGreater(len(rpcs), 40)
        missing = [r for r in rpcs if r not in MATRIX]
        self.assertEqual(missing, [], "RPCs without a row in the authorization matrix "
                         "(add them to MATRIX with their roles and owned field)")
        stale = [r for r in MATRIX if r not in rpcs]
        self.assertEqual(stale, [], "rows for RPCs the contract no longer has")

    def test_refusals_by_token(self):
        bad = [("no token", None, REFUSED_AUTH), ("garbage", "gm_garbage_0000", REFUSED_AUTH),
               ("revoked", self.tok_revoked, REFUSED_AUTH),
               ("expired", self.tok_expired, REFUSED_AUTH),
               ("disabled tenant", self.tok_disabled_t, REFUSED_DISABLED),
               ("disabled operator", self.tok_disabled_o, REFUSED_DISABLED)]
        for svc in SERVICES:
            before = self.digest()
            for (s, m), (roles, _) in sorted(MATRIX.items()):
                if s != svc:
                    continue
                for what, tok, codes in bad:
                    r = self.c.call(s, m, {}, token=tok)
                    self.assertIn(r.code, codes, "%s/%s with %s: %s" % (s, m, what, r))
                for role in ALL:
                    if role in roles:
                        continue
                    r = self.c.call(s, m, {}, token=self.role_tok[role])
                    self.assertEqual(r.code, "permission_denied",
                                     "%s/%s as %s: %s" % (s, m, role, r))
            self.assertEqual(self.digest(), before, "a refused %s call changed rows" % svc)

    def test_allowed_roles_pass_the_role_check(self):
        for (s, m), (roles, _) in sorted(MATRIX.items()):
            if m in ("SubmitJob", "RegisterNode", "SetPolicy", "CreateTenant", "CreateOperator",
                     "CreateToken", "TopUpTenant", "PayoutOperator", "SimulatePolicy",
                     "ExportTrace", "AcquireLease"):
                continue  # these do work with a valid body; an empty one is enough below
            for role in roles:
                r = self.c.call(s, m, {}, token=self.role_tok[role])
                self.assertNotIn(r.code, ("unauthenticated", "permission_denied"),
                                 "%s/%s as %s: %s" % (s, m, role, r))
                self.assertNotEqual(r.status // 100, 5, "%s/%s as %s: %s" % (s, m, role, r))

    def test_owner_and_non_owner(self):
        owner = {"job_id": (self.tok_a, self.tok_b, self.job_a),
                 "node_id": (self.tok_x, self.tok_y, self.node_x)}
        for (s, m), (_, field) in sorted(MATRIX.items()):
            if not field:
                continue
            own_tok, other_tok, obj = owner[field]
            if m == "RetireNode":
                obj = self.node_x_retire
            key = common.camel(field)
            # the owner is not refused for ownership
            r = self.c.call(s, m, {key: str(obj)}, token=own_tok)
            self.assertNotIn(r.code, ("permission_denied", "not_found", "unauthenticated"),
                             "%s/%s by the owner: %s" % (s, m, r))
            before = self.digest()
            theirs = self.c.call(s, m, {key: str(obj)}, token=other_tok)
            nowhere = self.c.call(s, m, {key: "999999999"}, token=other_tok)
            self.assertEqual(self.digest(), before, "%s/%s by a non-owner changed rows" % (s, m))
            self.assertNotEqual(theirs.status, 200, "%s/%s by a non-owner: %s" % (s, m, theirs))
            self.assertEqual((theirs.status, theirs.code), (nowhere.status, nowhere.code),
                             "%s/%s: exists-not-yours %s vs does-not-exist %s"
                             % (s, m, theirs, nowhere))
            scrub = lambda msg: re.sub(r"\d+", "N", msg or "")  # noqa: E731
            self.assertEqual(scrub(theirs.message), scrub(nowhere.message),
                             "%s/%s: the message tells the two apart" % (s, m))


def ok_body(reply):
    return common.ok(reply)
