"""HTTP and Connect plumbing: health, readiness, metrics, routing, content
types, limits, authentication and per-service authorization, and the two
encodings (JSON and binary protobuf) of the same call."""

import json

import common
from common import ItCase

MAX_BODY = 65536


def setUpModule():
    common.setup_module(__name__, ["--max_body_bytes=%d" % MAX_BODY])


def tearDownModule():
    common.teardown_module(__name__)


class HealthTest(ItCase):
    def test_healthz_200(self):
        st, _, body = self.c.http("GET", "/healthz")
        self.assertEqual(st, 200, body)

    def test_readyz_200(self):
        st, _, body = self.c.http("GET", "/readyz")
        self.assertEqual(st, 200, body)

    def test_metrics_has_up_and_rpc_counters(self):
        # one RPC first so that the per-method counter has a sample
        self.assertOk(self.c.admin("ListTenants", {}))
        st, h, body = self.c.http("GET", "/metrics")
        self.assertEqual(st, 200, body)
        text = body.decode()
        self.assertIn("text/plain", h.get("content-type", ""))
        self.assertRegex(text, r"(?m)^gpumatch_up(\{[^}]*\})? 1(\.0)?$", text[:3000])
        self.assertRegex(text, r"(?m)^gpumatch_rpc_requests_total\{", text[:3000])
        self.assertIn("ListTenants", text)


class RoutingTest(ItCase):
    def post(self, path, body=b"{}", ctype="application/json", token="admin"):
        h = {"Content-Type": ctype}
        if token:
            h["Authorization"] = "Bearer " + (self.c.admin_token if token == "admin" else token)
        return self.c.http("POST", path, body, h)

    def test_unknown_method_is_404_unimplemented(self):
        for path in ("/gpumatch.v1.JobService/NoSuchMethod", "/gpumatch.v1.NoSuchService/Get",
                     "/nonsense"):
            st, _, body = self.post(path)
            self.assertEqual(st, 404, "%s: %s" % (path, body))
            if path.startswith("/gpumatch"):
                self.assertEqual(json.loads(body).get("code"), "unimplemented", body)

    def test_wrong_content_type_is_415(self):
        st, _, body = self.post("/gpumatch.v1.AdminService/ListTenants", b"{}", "text/plain")
        self.assertEqual(st, 415, body)
        st, _, body = self.post("/gpumatch.v1.AdminService/ListTenants", b"{}",
                                "application/grpc")
        self.assertEqual(st, 415, body)

    def test_json_with_charset_is_accepted(self):
        st, _, body = self.post("/gpumatch.v1.AdminService/ListTenants", b"{}",
                                "application/json; charset=utf-8")
        self.assertEqual(st, 200, body)

    def test_get_on_rpc_path_is_405(self):
        st, _, body = self.c.http("GET", "/gpumatch.v1.AdminService/ListTenants",
                                  headers={"Authorization": "Bearer " + self.c.admin_token})
        self.assertEqual(st, 405, body)

    def test_oversize_body_is_413(self):
        big = b'{"tenant": {"name": "' + b"x" * (2 * MAX_BODY) + b'"}}'
        head = ("POST /gpumatch.v1.AdminService/CreateTenant HTTP/1.1\r\n"
                "Host: 127.0.0.1\r\nContent-Type: application/json\r\n"
                "Authorization: Bearer %s\r\nContent-Length: %d\r\n\r\n"
                % (self.c.admin_token, len(big))).encode()
        before = self.c.count("tenants")
        st, raw = self.c.raw_request(head + big)
        self.assertEqual(st, 413, raw[:500])
        self.assertUnchanged("tenants", before)
        # and the server is still fine
        self.assertOk(self.c.admin("ListTenants", {}))

    def test_body_just_under_limit_is_read(self):
        name = "n" * (MAX_BODY - 200)
        r = self.c.admin("CreateTenant", {"tenant": {"name": name}})
        # too long a name is the handler's business; what matters is that
        # the body was read and decoded (not 413)
        self.assertNotEqual(r.status, 413, str(r))
        self.assertIn(r.status, (200, 400), str(r))

    def test_malformed_json_is_invalid_argument(self):
        r = self.c.call("AdminService", "ListTenants", token=self.c.admin_token,
                        raw_body=b'{"pageSize": ')
        self.assertError(r, "invalid_argument")

    def test_malformed_proto_is_invalid_argument(self):
        r = self.c.call("AdminService", "ListTenants", token=self.c.admin_token, binary=True,
                        raw_body=b"\xff\xff\xff\xff")
        self.assertError(r, "invalid_argument")

    def test_wrong_json_type_is_invalid_argument_naming_field(self):
        r = self.c.admin("ListTenants", {"pageSize": "many"})
        self.assertError(r, "invalid_argument", field="page_size")


class AuthTest(ItCase):
    @classmethod
    def setUpClass(cls):
        c = common._clusters[__name__]
        cls.tenant, cls.tenant_token = c.new_tenant()
        cls.operator, cls.operator_token = c.new_operator()

    def test_no_token_is_401(self):
        r = self.c.call("AdminService", "ListTenants", {})
        self.assertError(r, "unauthenticated")
        r = self.c.call("JobService", "ListJobs", {})
        self.assertError(r, "unauthenticated")

    def test_garbage_tokens_are_401(self):
        for tok in ("garbage", "gm_" + "A" * 32, "gm_", "x" * 500):
            with self.subTest(token=tok[:40]):
                r = self.c.call("AdminService", "ListTenants", {}, token=tok)
                self.assertError(r, "unauthenticated", msg="token %r" % tok[:40])

    def test_other_scheme_is_401(self):
        r = self.c.call("AdminService", "ListTenants", {},
                        headers={"Authorization": "Basic " + self.c.admin_token})
        self.assertError(r, "unauthenticated")

    def test_tenant_token_on_admin_service_is_403(self):
        r = self.c.call("AdminService", "ListTenants", {}, token=self.tenant_token)
        self.assertError(r, "permission_denied")

    def test_tenant_token_on_node_service_is_403(self):
        r = self.c.call("NodeService", "ListNodes", {}, token=self.tenant_token)
        self.assertError(r, "permission_denied")

    def test_operator_token_on_job_service_is_403(self):
        r = self.c.call("JobService", "ListJobs", {}, token=self.operator_token)
        self.assertError(r, "permission_denied")

    def test_operator_token_on_admin_service_is_403(self):
        r = self.c.call("AdminService", "ListTenants", {}, token=self.operator_token)
        self.assertError(r, "permission_denied")

    def test_roles_reach_their_services(self):
        self.assertOk(self.c.call("JobService", "ListJobs", {}, token=self.tenant_token))
        self.assertOk(self.c.call("NodeService", "ListNodes", {}, token=self.operator_token))
        self.assertOk(self.c.call("JobService", "ListJobs", {}, token=self.c.admin_token))
        self.assertOk(self.c.call("NodeService", "ListNodes", {}, token=self.c.admin_token))

    def test_auth_checked_before_body(self):
        # a bad body from an unauthenticated caller is still 401
        r = self.c.call("AdminService", "ListTenants", raw_body=b"{not json")
        self.assertError(r, "unauthenticated")


class EncodingTest(ItCase):
    def test_json_and_binary_give_the_same_answer(self):
        t = self.c.create_tenant()
        j = self.assertOk(self.c.admin("GetTenant", {"tenantId": t["id"]}))
        b = self.assertOk(self.c.admin("GetTenant", {"tenantId": t["id"]}, binary=True))
        self.assertEqual(j["tenant"], b["tenant"])
        self.assertEqual(b["tenant"]["name"], t["name"])

    def test_binary_response_is_application_proto(self):
        r = self.c.admin("ListTenants", {}, binary=True)
        self.assertOk(r)
        self.assertEqual(r.headers.get("content-type", "").split(";")[0], "application/proto")

    def test_json_response_is_application_json(self):
        r = self.c.admin("ListTenants", {})
        self.assertOk(r)
        self.assertEqual(r.headers.get("content-type", "").split(";")[0], "application/json")

    def test_binary_create_then_json_read(self):
        name = self.c.unique("bin-tenant")
        b = self.assertOk(self.c.admin("CreateTenant", {"tenant": {"name": name}}, binary=True))
        tid = b["tenant"]["id"]
        self.assertTrue(int(tid) > 0, b)
        j = self.assertOk(self.c.admin("GetTenant", {"tenantId": tid}))
        self.assertEqual(j["tenant"]["name"], name)

    def test_binary_errors_are_connect_json(self):
        r = self.c.admin("CreateTenant", {"tenant": {"name": ""}}, binary=True)
        self.assertError(r, "invalid_argument", field="name")
        self.assertIn("json", r.headers.get("content-type", ""))

    def test_json_accepts_proto_field_names(self):
        # proto3 JSON parsers accept the original snake_case names too
        r = self.c.admin("ListTenants", {"page_size": 1})
        body = self.assertOk(r)
        self.assertLessEqual(len(body.get("tenants", [])), 1)

    def test_int64_fields_are_strings_in_json(self):
        t = self.c.create_tenant()
        self.assertIsInstance(t["id"], str, t)
        self.assertIsInstance(t.get("createdAtUs", "0"), str, t)


if __name__ == "__main__":
    import run
    raise SystemExit(run.main(["-v", __name__] + __import__("sys").argv[1:]))
