"""AdminService identity management: tenants, operators and tokens — create,
list (paged), get, revoke/disable; bad input is invalid_argument naming the
field with nothing written; a revoked token stops working at once."""

import json

import common
from common import ItCase


def setUpModule():
    common.setup_module(__name__)


def tearDownModule():
    common.teardown_module(__name__)


def page_all(test, method, key, req=None, page_size=2, token=None, service="AdminService"):
    """Walks every page; returns (items, number of pages)."""
    items, pages, tok = [], 0, ""
    while True:
        body = dict(req or {}, pageSize=page_size)
        if tok:
            body["pageToken"] = tok
        b = test.assertOk(test.c.call(service, method, body, token=token or test.c.admin_token))
        got = b.get(key, [])
        test.assertLessEqual(len(got), page_size, "page larger than page_size: %s" % b)
        items += got
        pages += 1
        tok = b.get("nextPageToken", "")
        if not tok:
            return items, pages
        test.assertLess(pages, 1000, "paging does not end")


class TenantTest(ItCase):
    def test_create_tenant(self):
        name = self.c.unique("acme")
        b = self.assertOk(self.c.admin("CreateTenant", {"tenant": {
            "name": name, "contact": "ops@acme.example", "fairShareWeight": 5,
            "creditLimitMicros": "1000000", "maxRunningGpus": 8}}))
        t = b["tenant"]
        self.assertGreater(int(t["id"]), 0)
        self.assertEqual(t["name"], name)
        self.assertEqual(t.get("state"), "TENANT_STATE_ACTIVE")
        self.assertEqual(t.get("fairShareWeight"), 5)
        self.assertEqual(t.get("creditLimitMicros"), "1000000")
        self.assertEqual(t.get("maxRunningGpus"), 8)
        self.assertEqual(t.get("contact"), "ops@acme.example")
        self.assertGreater(int(t.get("createdAtUs", "0")), 0, t)
        self.assertEqual(self.c.count("tenants", "name = '%s'" % name), 1)
        got = self.assertOk(self.c.admin("GetTenant", {"tenantId": t["id"]}))
        self.assertEqual(got["tenant"]["name"], name)

    def test_create_tenant_defaults(self):
        t = self.c.create_tenant()
        self.assertEqual(t.get("fairShareWeight"), 1, "0 in create = 1: %s" % t)

    def test_create_tenant_ignores_read_only_fields(self):
        name = self.c.unique("ro")
        b = self.assertOk(self.c.admin("CreateTenant", {"tenant": {
            "name": name, "id": "999999", "balanceMicros": "5000000",
            "state": "TENANT_STATE_DISABLED"}}))
        t = b["tenant"]
        self.assertNotEqual(t["id"], "999999")
        self.assertEqual(t.get("state"), "TENANT_STATE_ACTIVE")
        self.assertIn(t.get("balanceMicros", "0"), ("0", 0))

    def test_create_tenant_bad_input_writes_nothing(self):
        cases = [
            ({"tenant": {"name": ""}}, "name"),
            ({"tenant": {}}, "name"),
            ({}, "tenant"),
            ({"tenant": {"name": self.c.unique("w"), "fairShareWeight": 2000000}},
             "fair_share_weight"),
            ({"tenant": {"name": self.c.unique("c"), "creditLimitMicros": "-1"}},
             "credit_limit_micros"),
            ({"tenant": {"name": self.c.unique("u"), "noSuchField": 1}}, "noSuchField"),
        ]
        for req, field in cases:
            with self.subTest(case=json.dumps(req)[:120]):
                before = self.c.count("tenants")
                r = self.c.admin("CreateTenant", req)
                # an absent `tenant` may also be read as "name required"
                ok_fields = (field, "name") if field == "tenant" else (field,)
                self.assertError(r, "invalid_argument", msg=json.dumps(req)[:100])
                self.assertTrue(any(common.camel(f) in r.message or f in r.message
                                    for f in ok_fields),
                                "message should name %s: %s" % (" or ".join(ok_fields), r))
                self.assertUnchanged("tenants", before)

    def test_duplicate_name_is_already_exists(self):
        name = self.c.unique("dup")
        self.c.create_tenant(name)
        before = self.c.count("tenants")
        r = self.c.admin("CreateTenant", {"tenant": {"name": name}})
        self.assertError(r, "already_exists")
        self.assertUnchanged("tenants", before)

    def test_get_unknown_tenant_is_not_found(self):
        self.assertError(self.c.admin("GetTenant", {"tenantId": "987654321"}), "not_found")

    def test_list_tenants_pages(self):
        made = {self.c.create_tenant()["id"] for _ in range(5)}
        items, pages = page_all(self, "ListTenants", "tenants", page_size=2)
        ids = [t["id"] for t in items]
        self.assertEqual(len(ids), len(set(ids)), "a tenant on two pages: %s" % ids)
        self.assertTrue(made <= set(ids), "missing %s" % (made - set(ids)))
        self.assertEqual(len(ids), self.c.count("tenants"))
        self.assertGreaterEqual(pages, 3)

    def test_list_tenants_default_page(self):
        b = self.assertOk(self.c.admin("ListTenants", {}))
        self.assertGreaterEqual(len(b.get("tenants", [])), 1)

    def test_list_tenants_bad_page_token(self):
        r = self.c.admin("ListTenants", {"pageToken": "%%%not-a-token"})
        self.assertError(r, "invalid_argument", field="page_token")

    def test_list_tenants_negative_page_size(self):
        r = self.c.admin("ListTenants", {"pageSize": -1})
        self.assertError(r, "invalid_argument", field="page_size")

    def test_disable_tenant_stops_its_tokens(self):
        t, tok = self.c.new_tenant()
        self.assertOk(self.c.call("JobService", "ListJobs", {}, token=tok))
        b = self.assertOk(self.c.admin("DisableTenant", {"tenantId": t["id"], "reason": "test"}))
        self.assertEqual(b["tenant"].get("state"), "TENANT_STATE_DISABLED")
        self.assertError(self.c.call("JobService", "ListJobs", {}, token=tok), "unauthenticated")
        self.assertOk(self.c.admin("EnableTenant", {"tenantId": t["id"]}))
        self.assertOk(self.c.call("JobService", "ListJobs", {}, token=tok))


class OperatorTest(ItCase):
    def test_create_operator(self):
        name = self.c.unique("gpu-farm")
        b = self.assertOk(self.c.admin("CreateOperator", {"operatorRecord": {
            "name": name, "nodeLimit": 3, "contact": "farm@example"}}))
        o = b["operatorRecord"]
        self.assertGreater(int(o["id"]), 0)
        self.assertEqual(o["name"], name)
        self.assertEqual(o.get("nodeLimit"), 3)
        self.assertEqual(o.get("state"), "OPERATOR_STATE_ACTIVE")
        self.assertEqual(self.c.count("operators", "name = '%s'" % name), 1)
        got = self.assertOk(self.c.admin("GetOperator", {"operatorId": o["id"]}))
        self.assertEqual(got["operatorRecord"]["name"], name)

    def test_create_operator_bad_input_writes_nothing(self):
        for req, field in [({"operatorRecord": {"name": ""}}, "name"),
                           ({"operatorRecord": {"name": "x", "bogus": True}}, "bogus")]:
            with self.subTest(case=json.dumps(req)):
                before = self.c.count("operators")
                self.assertError(self.c.admin("CreateOperator", req), "invalid_argument",
                                 field=field, msg=json.dumps(req))
                self.assertUnchanged("operators", before)

    def test_duplicate_operator_is_already_exists(self):
        name = self.c.unique("dup-op")
        self.c.create_operator(name)
        before = self.c.count("operators")
        self.assertError(self.c.admin("CreateOperator", {"operatorRecord": {"name": name}}),
                         "already_exists")
        self.assertUnchanged("operators", before)

    def test_list_operators_pages(self):
        made = {self.c.create_operator()["id"] for _ in range(3)}
        items, _ = page_all(self, "ListOperators", "operators", page_size=2)
        ids = [o["id"] for o in items]
        self.assertEqual(len(ids), len(set(ids)))
        self.assertTrue(made <= set(ids))


class TokenTest(ItCase):
    def test_tenant_token_works_at_once_with_its_role(self):
        t = self.c.create_tenant()
        b = self.assertOk(self.c.admin("CreateToken", {
            "role": "ROLE_TENANT", "tenantId": t["id"], "name": "ci-runner"}))
        secret, tok = b["secret"], b["token"]
        self.assertTrue(secret.startswith("gm_"), secret)
        self.assertEqual(tok.get("role"), "ROLE_TENANT")
        self.assertEqual(tok.get("tenantId"), t["id"])
        self.assertEqual(tok.get("name"), "ci-runner")
        self.assertTrue(tok.get("prefix") and secret.startswith(tok["prefix"]), tok)
        self.assertLess(len(tok["prefix"]), len(secret))
        self.assertOk(self.c.call("JobService", "ListJobs", {}, token=secret))
        self.assertError(self.c.call("AdminService", "ListTenants", {}, token=secret),
                         "permission_denied")
        self.assertError(self.c.call("NodeService", "ListNodes", {}, token=secret),
                         "permission_denied")
        # only the hash is stored
        self.assertEqual(self.c.count("api_tokens", "secret_sha256 = sha256(convert_to('%s', "
                                      "'UTF8'))" % secret), 1)
        self.assertEqual(self.c.count("api_tokens", "'%s' IN (name, prefix, created_by)"
                                      % secret), 0)

    def test_operator_token(self):
        o = self.c.create_operator()
        secret, tok = self.c.create_token("ROLE_OPERATOR", operator_id=o["id"])
        self.assertEqual(tok.get("operatorId"), o["id"])
        self.assertOk(self.c.call("NodeService", "ListNodes", {}, token=secret))
        self.assertError(self.c.call("JobService", "ListJobs", {}, token=secret),
                         "permission_denied")

    def test_admin_token(self):
        secret, tok = self.c.create_token("ROLE_ADMIN")
        self.assertEqual(tok.get("role"), "ROLE_ADMIN")
        self.assertOk(self.c.call("AdminService", "ListTenants", {}, token=secret))

    def test_create_token_bad_input_writes_nothing(self):
        t = self.c.create_tenant()
        o = self.c.create_operator()
        cases = [
            ({"name": "x"}, "invalid_argument", "role"),
            ({"role": "ROLE_TENANT"}, "invalid_argument", "tenant_id"),
            ({"role": "ROLE_OPERATOR"}, "invalid_argument", "operator_id"),
            ({"role": "ROLE_TENANT", "tenantId": t["id"], "operatorId": o["id"]},
             "invalid_argument", "operator_id"),
            ({"role": "ROLE_ADMIN", "tenantId": t["id"]}, "invalid_argument", "tenant_id"),
            ({"role": "ROLE_NO_SUCH"}, "invalid_argument", "role"),
            ({"role": "ROLE_TENANT", "tenantId": "987654321"},
             ("not_found", "invalid_argument", "failed_precondition"), None),
        ]
        for req, code, field in cases:
            with self.subTest(case=json.dumps(req)[:120]):
                before = self.c.count("api_tokens")
                self.assertError(self.c.admin("CreateToken", req), code, field=field,
                                 msg=json.dumps(req))
                self.assertUnchanged("api_tokens", before)

    def test_list_tokens_shows_no_secrets(self):
        t = self.c.create_tenant()
        secrets = [self.c.create_token("ROLE_TENANT", tenant_id=t["id"])[0] for _ in range(3)]
        r = self.c.admin("ListTokens", {"tenantId": t["id"]})
        b = self.assertOk(r)
        self.assertEqual(len(b.get("tokens", [])), 3, b)
        for tok in b["tokens"]:
            self.assertEqual(tok.get("tenantId"), t["id"])
            self.assertNotIn("secret", tok)
        raw = r.raw.decode()
        for s in secrets:
            self.assertNotIn(s, raw)
            self.assertNotIn(s[len("gm_"):], raw)

    def test_list_tokens_pages_and_filters(self):
        o = self.c.create_operator()
        made = {self.c.create_token("ROLE_OPERATOR", operator_id=o["id"])[1]["id"]
                for _ in range(5)}
        items, pages = page_all(self, "ListTokens", "tokens", {"operatorId": o["id"]},
                                page_size=2)
        self.assertEqual({t["id"] for t in items}, made)
        self.assertEqual(len(items), 5)
        self.assertEqual(pages, 3)
        b = self.assertOk(self.c.admin("ListTokens", {"role": "ROLE_ADMIN", "pageSize": 1000}))
        self.assertTrue(all(t.get("role") == "ROLE_ADMIN" for t in b.get("tokens", [])), b)
        self.assertGreaterEqual(len(b.get("tokens", [])), 1, "the harness's admin token")

    def test_revoke_stops_the_token_at_once(self):
        t = self.c.create_tenant()
        secret, tok = self.c.create_token("ROLE_TENANT", tenant_id=t["id"])
        self.assertOk(self.c.call("JobService", "ListJobs", {}, token=secret))
        b = self.assertOk(self.c.admin("RevokeToken", {"tokenId": tok["id"]}))
        self.assertGreater(int(b["token"].get("revokedAtUs", "0")), 0, b)
        self.assertError(self.c.call("JobService", "ListJobs", {}, token=secret),
                         "unauthenticated")
        # idempotent
        b2 = self.assertOk(self.c.admin("RevokeToken", {"tokenId": tok["id"]}))
        self.assertEqual(b2["token"].get("revokedAtUs"), b["token"].get("revokedAtUs"))
        # listed only with include_revoked
        listed = self.assertOk(self.c.admin("ListTokens", {"tenantId": t["id"]}))
        self.assertNotIn(tok["id"], [x["id"] for x in listed.get("tokens", [])])
        listed = self.assertOk(self.c.admin("ListTokens", {"tenantId": t["id"],
                                                           "includeRevoked": True}))
        self.assertIn(tok["id"], [x["id"] for x in listed.get("tokens", [])])

    def test_revoked_admin_token(self):
        secret, tok = self.c.create_token("ROLE_ADMIN")
        self.assertOk(self.c.call("AdminService", "ListTenants", {}, token=secret))
        self.assertOk(self.c.admin("RevokeToken", {"tokenId": tok["id"]}))
        self.assertError(self.c.call("AdminService", "ListTenants", {}, token=secret),
                         "unauthenticated")

    def test_revoke_unknown_token_is_not_found(self):
        self.assertError(self.c.admin("RevokeToken", {"tokenId": "987654321"}), "not_found")

    def test_expired_token_is_rejected(self):
        t = self.c.create_tenant()
        exp = common.now_us() + 1500000
        b = self.assertOk(self.c.admin("CreateToken", {
            "role": "ROLE_TENANT", "tenantId": t["id"], "expiresAtUs": str(exp)}))
        self.assertOk(self.c.call("JobService", "ListJobs", {}, token=b["secret"]))
        common.wait_for(lambda: self.c.call("JobService", "ListJobs", {},
                                            token=b["secret"]).status == 401,
                        timeout=10, what="the token to expire")


if __name__ == "__main__":
    import sys
    import run
    raise SystemExit(run.main(["-v", __name__] + sys.argv[1:]))
