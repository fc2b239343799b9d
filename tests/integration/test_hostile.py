"""Hostile input at the request level, against the real server: every RPC of
the three services (enumerated from the descriptors, so a new RPC is covered
without a new row) gets ids at or above 2^63, strings with invalid UTF-8 and
NUL bytes in binary protobuf, truncated bodies at every length, and the JSON
classes around them (NaN, Infinity, unknown enums and fields, duplicate keys,
deep nesting, huge repeated fields, SQL-looking and RTL strings). Each case
must answer a Connect error naming the field or the limit (never 500) and
change no row."""

import json

import common
from common import ItCase
from cluster import _method_types, proto_module

MAX_BODY = 1 << 20
SERVICES = ("JobService", "NodeService", "AdminService")
# rows compared whole (md5 of every row); api_tokens by count (use stamps it)
TABLES = ("tenants", "operators", "nodes", "gpus", "jobs", "leases", "policies", "probe_runs")


# its own meson test: `meson test hostile` (tests/integration/meson.build)
OWN_SUITE = "hostile"


MAX_PAGE = 2048  # max_page_bytes: List answers are paged by size at this


def setUpModule():
    common.setup_module(__name__, ["--max_body_bytes=%d" % MAX_BODY,
                                   "--max_page_bytes=%d" % MAX_PAGE])


def tearDownModule():
    common.teardown_module(__name__)


def methods():
    """(service, method, request descriptor) of every RPC."""
    out = []
    for svc in SERVICES:
        fname = {"JobService": "job_service", "NodeService": "node_service",
                 "AdminService": "admin_service"}[svc]
        sd = proto_module(fname).DESCRIPTOR.services_by_name[svc]
        for m in sd.methods:
            out.append((svc, m.name, m.input_type))
    return out


def varint(v):
    b = b""
    while True:
        x = v & 0x7f
        v >>= 7
        if v:
            b += bytes([x | 0x80])
        else:
            return b + bytes([x])


def field(num, wt, payload):
    if wt == 0:
        return varint(num << 3) + varint(payload)
    return varint(num << 3 | 2) + varint(len(payload)) + payload


class HostileTest(ItCase):
    @classmethod
    def setUpClass(cls):
        c = common._clusters[__name__]
        _, cls.tenant_tok = c.new_tenant()
        _, cls.op_tok = c.new_operator()
        cls.tokens = {"admin": c.admin_token, "tenant": cls.tenant_tok, "operator": cls.op_tok}
        cls.role_of = {}

    def counts(self):
        """One psql call: a digest of every row of the tables a refused
        call could touch."""
        sql = "SELECT " + ", ".join(
            "(SELECT md5(coalesce(string_agg(x::text, ',' ORDER BY x::text), '')) FROM %s x)"
            % t for t in TABLES) + ", (SELECT count(*) FROM api_tokens)"
        return dict(zip(TABLES + ("api_tokens",), self.c.psql(sql)[0]))

    def token_for(self, svc, meth):
        """A token whose role may call the method (decoding runs after the
        role check)."""
        if (svc, meth) not in self.role_of:
            for role, tok in self.tokens.items():
                r = self.c.call(svc, meth, raw_body=b"\xff", binary=True, token=tok)
                if r.code != "permission_denied":
                    self.role_of[(svc, meth)] = role
                    break
            else:
                self.role_of[(svc, meth)] = "admin"
        return self.tokens[self.role_of[(svc, meth)]]

    def refused(self, svc, meth, raw, field_name, binary=True, codes=("invalid_argument",)):
        r = self.c.call(svc, meth, raw_body=raw, binary=binary,
                        token=self.token_for(svc, meth))
        self.assertError(r, codes, field=field_name, msg="%s/%s" % (svc, meth))

    def setUp(self):
        super().setUp()
        self.before = self.counts()

    def assertNothingChanged(self):
        self.assertEqual(self.counts(), self.before, "a refused call changed rows")

    def test_ids_at_or_above_2_63_name_the_field(self):
        checked = 0
        for svc, meth, d in methods():
            for f in d.fields:
                if f.type not in (f.TYPE_UINT64, f.TYPE_FIXED64) or f.name == "seed":
                    continue
                wt = 0
                for v in (1 << 63, (1 << 64) - 1):
                    if f.type == f.TYPE_FIXED64:
                        raw = varint(f.number << 3 | 1) + v.to_bytes(8, "little")
                    else:
                        raw = field(f.number, wt, v)
                    if f.label == f.LABEL_REPEATED and f.type == f.TYPE_UINT64:
                        raw = field(f.number, 2, varint(v))  # packed
                    self.refused(svc, meth, raw, f.name)
                    checked += 1
        self.assertGreater(checked, 20, "too few id fields found: descriptors not read?")
        self.assertNothingChanged()

    def test_invalid_utf8_and_nul_in_every_string_field(self):
        checked = 0
        for svc, meth, d in methods():
            for f in d.fields:
                if f.type != f.TYPE_STRING:
                    continue
                for bad in (b"ab\xff\xfecd", b"nul\x00AAA", b"\xed\xa0\x80", b"\xc0\xaf"):
                    self.refused(svc, meth, field(f.number, 2, bad), f.name)
                    checked += 1
        self.assertGreater(checked, 20)
        self.assertNothingChanged()

    def test_invalid_strings_inside_a_job_spec(self):
        # SubmitJob.spec (field 3) -> command (repeated string) / env values
        req_cls, _ = _method_types("JobService", "SubmitJob")
        d = req_cls.DESCRIPTOR
        spec_f = d.fields_by_name["spec"]
        sd = spec_f.message_type
        good_key = field(d.fields_by_name["idempotency_key"].number, 2, b"hostile-1")
        for name in ("command", "env", "image"):
            if name not in sd.fields_by_name:
                continue
            f = sd.fields_by_name[name]
            if f.message_type is not None:  # map<string,string>
                payload = field(1, 2, b"K") + field(2, 2, b"rm\x00 -rf /")
            else:
                payload = b"rm\x00 -rf /"
            raw = good_key + field(spec_f.number, 2, field(f.number, 2, payload))
            self.refused("JobService", "SubmitJob", raw, name)
        self.assertNothingChanged()

    def test_map_key_given_twice_is_refused_in_both_codecs(self):
        # proto3 would keep the last entry silently; gpumatch refuses the
        # request naming the map and the key, in binary as in JSON
        req_cls, _ = _method_types("JobService", "SubmitJob")
        d = req_cls.DESCRIPTOR
        spec_f = d.fields_by_name["spec"]
        env_num = spec_f.message_type.fields_by_name["env"].number
        key = field(d.fields_by_name["idempotency_key"].number, 2, b"dup-map-1")
        entry = lambda k, v: field(env_num, 2, field(1, 2, k) + field(2, 2, v))
        spec = common.job_spec()
        spec.pop("env", None)
        from cluster import to_binary
        base = to_binary("JobService", "SubmitJob", common.submit_req("dup-map-1", spec))
        for raw in (base + field(spec_f.number, 2, entry(b"A", b"1") + entry(b"A", b"2")),
                    key + field(spec_f.number, 2, entry(b"A", b"1") + entry(b"B", b"0") +
                                entry(b"A", b"2"))):
            r = self.c.call("JobService", "SubmitJob", raw_body=raw, binary=True,
                            token=self.tenant_tok)
            self.assertError(r, "invalid_argument", field="spec.env")
            self.assertIn('key "A" given twice', r.message)
        spec["env"] = {"A": "1"}
        body = json.dumps(common.submit_req("dup-map-2", spec)).encode()
        body = body.replace(b'"env": {"A": "1"}', b'"env": {"A": "1", "A": "2"}')
        self.assertIn(b'"A": "2"', body)
        r = self.c.call("JobService", "SubmitJob", raw_body=body, token=self.tenant_tok)
        self.assertError(r, "invalid_argument", field="spec.env")
        self.assertIn('key "A" given twice', r.message)
        # a node's labels, binary: RegisterNodeRequest.labels
        rq, _ = _method_types("NodeService", "RegisterNode")
        lab = rq.DESCRIPTOR.fields_by_name["labels"].number
        raw = (field(lab, 2, field(1, 2, b"zone") + field(2, 2, b"a")) +
               field(lab, 2, field(1, 2, b"zone") + field(2, 2, b"b")))
        self.refused("NodeService", "RegisterNode", raw, "labels")
        self.assertNothingChanged()

    def test_nul_idempotency_keys_do_not_collide(self):
        req_cls, _ = _method_types("JobService", "SubmitJob")
        num = req_cls.DESCRIPTOR.fields_by_name["idempotency_key"].number
        for k in (b"nul\x00AAA", b"nul\x00BBB"):
            self.refused("JobService", "SubmitJob", field(num, 2, k), "idempotency_key")
        self.assertNothingChanged()

    def test_truncated_bodies_at_every_length(self):
        spec = common.job_spec(env={"A": "b"}, labelSelector={"x": "y"})
        full = common.submit_req("trunc-1", spec)
        from cluster import to_binary
        raw = to_binary("JobService", "SubmitJob", full)
        before = self.c.count("jobs")
        for n in range(1, len(raw)):
            r = self.c.call("JobService", "SubmitJob", raw_body=raw[:n], binary=True,
                            token=self.tenant_tok)
            self.assertNotEqual(r.status // 100, 5, "length %d: %s" % (n, r))
            if r.status == 200:  # a prefix that is itself a valid message
                continue
            self.assertIn(r.code, ("invalid_argument", "failed_precondition"), r)
        jobs = self.c.count("jobs")
        self.assertLessEqual(jobs - before, len(raw), "at most one job per prefix")

    def test_json_classes(self):
        cases = [
            (b'{"pageSize": NaN}', None),
            (b'{"pageSize": Infinity}', None),
            (b'{"pageSize": 1e400}', None),
            (b'{"pageSize": 99999999999}', "page_size"),
            (b'{"pageSize": 1, "pageSize": 2}', "page_size"),
            (b'{"pageSize": 1, "page_size": 2}', "page_size"),
            (b'{"noSuchField": 1}', None),
            (b'[' * 5000 + b']' * 5000, None),
            (b'{"pageSize": "1\\u0000"}', None),
            (b'"\xff"', None),
        ]
        for body, name in cases:
            r = self.c.call("JobService", "ListJobs", raw_body=body, token=self.tenant_tok)
            self.assertEqual(r.code, "invalid_argument", "%r: %s" % (body[:40], r))
            if name:
                self.assertError(r, "invalid_argument", field=name)
        self.assertNothingChanged()

    def test_json_unknown_enum_and_overflow(self):
        spec = common.job_spec()
        spec["kind"] = "JOB_KIND_NO_SUCH"
        r = self.c.call("JobService", "SubmitJob", common.submit_req("enum-1", spec),
                        token=self.tenant_tok)
        self.assertError(r, "invalid_argument", field="kind")
        r = self.c.call("JobService", "GetJob", {"jobId": str(1 << 63)}, token=self.tenant_tok)
        self.assertError(r, "invalid_argument", field="job_id")
        r = self.c.call("JobService", "GetJob", {"jobId": str(1 << 64)}, token=self.tenant_tok)
        self.assertEqual(r.code, "invalid_argument", r)

    def test_sql_rtl_and_huge_strings_are_data_not_code(self):
        for name in ("x'; DROP TABLE jobs; --", "\u202eevil\u202c", "名前"):
            spec = common.job_spec(command=["echo", name], env={"V": name})
            key = "sql-%d" % abs(hash(name))
            r = self.c.call("JobService", "SubmitJob", common.submit_req(key, spec, name=name),
                            token=self.tenant_tok)
            if r.status == 200:
                jid = r.body["job"]["id"]
                g = self.assertOk(self.c.call("JobService", "GetJob", {"jobId": jid},
                                              token=self.tenant_tok))
                self.assertEqual(g["job"]["spec"]["command"][1], name)
            else:
                self.assertEqual(r.code, "invalid_argument", r)
        self.assertGreater(self.c.count("jobs"), -1)
        r = self.c.call("JobService", "SubmitJob",
                        common.submit_req("huge-1", common.job_spec(command=["x" * 900000])),
                        token=self.tenant_tok)
        self.assertEqual(r.code, "invalid_argument", r)
        r = self.c.call("JobService", "SubmitJob",
                        common.submit_req("labels-1", common.job_spec(
                            env={"K%d" % i: "v" for i in range(10000)})),
                        token=self.tenant_tok)
        self.assertEqual(r.code, "invalid_argument", r)

    def test_list_answers_are_paged_by_size(self):
        # enough rows that a page of 1000 would pass MAX_PAGE many times
        for i in range(24):
            self.c.new_tenant(name=self.c.unique("page-%02d-" % i + "x" * 100))
        _, otok = self.c.new_operator()
        for i in range(6):
            common.NodeAgent.register(self.c, otok, common.node_req(
                self.c.unique("pg"), gpus=8, labels={"k%d" % j: "v" * 60 for j in range(8)}),
                ready=False)
        _method_types("JobService", "ListJobs")  # makes protobuf importable
        from google.protobuf import json_format
        lists = [  # (service, method, repeated field, table the rows come from, body)
            ("AdminService", "ListTenants", "tenants", "tenants", {}),
            ("AdminService", "ListOperators", "operators", "operators", {}),
            ("AdminService", "ListTokens", "tokens", "api_tokens", {}),
            ("NodeService", "ListNodes", "nodes", "nodes", {}),
            ("AdminService", "ListTransfers", "transfers", "ledger_transfers", {}),
            ("AdminService", "ListPolicies", "policies", "policies", {}),
            ("JobService", "ListJobs", "jobs", "jobs", {}),
        ]
        paged = []
        for svc, meth, fld, table, body in lists:
            _, resp_cls = _method_types(svc, meth)
            seen, token, pages = [], "", 0
            while True:
                req = dict(body, pageSize=1000)
                if token:
                    req["pageToken"] = token
                r = self.c.call(svc, meth, req, token=self.c.admin_token)
                self.assertEqual(r.status, 200, "%s: %s" % (meth, r))
                items = r.body.get(fld, [])
                size = json_format.ParseDict(r.body, resp_cls()).ByteSize()
                self.assertTrue(len(items) == 1 or size <= MAX_PAGE,
                                "%s page %d: %d bytes, %d items" % (meth, pages, size,
                                                                     len(items)))
                seen += [json.dumps(x, sort_keys=True) for x in items]
                pages += 1
                token = r.body.get("nextPageToken", "")
                self.assertTrue(items or not token, "%s: an empty page with a token" % meth)
                if not token:
                    break
                self.assertLess(pages, 10000)
            self.assertEqual(len(seen), len(set(seen)), "%s: an item on two pages" % meth)
            self.assertEqual(len(seen), int(self.c.count(table)), "%s: items lost" % meth)
            if pages > 1:
                paged.append(meth)
        for meth in ("ListTenants", "ListNodes"):
            self.assertIn(meth, paged, "%s was not paged by size" % meth)
        # learned speeds (no rows here): an answer with no next page
        r = self.c.call("AdminService", "ListLearnedSpeeds", {"pageSize": 1000},
                        token=self.c.admin_token)
        self.assertEqual(r.status, 200, r)
        self.assertFalse(r.body.get("nextPageToken"), r)
        self.assertError(self.c.call("AdminService", "ListLearnedSpeeds", {"pageToken": "zz"},
                                     token=self.c.admin_token), "invalid_argument",
                         field="pageToken")

    def test_content_types(self):
        for ct in ("application/xml", "application/json; charset=latin1", "",
                   "application/json, application/proto"):
            st, _, body = self.c.http("POST", "/gpumatch.v1.JobService/ListJobs", b"{}",
                                      {"Content-Type": ct,
                                       "Authorization": "Bearer " + self.tenant_tok})
            self.assertEqual(st, 415, "%r: %s" % (ct, body))
            self.assertEqual(json.loads(body)["code"], "invalid_argument")
