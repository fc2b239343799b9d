"""JobService with tenant tokens: submit (idempotency keys), bad specs,
get, list (paging, state filter), tenant isolation (others' jobs are
not_found), cancel, explain. The one node here has a single GPU and every
job asks for two, so nothing is ever placed and jobs stay QUEUED."""

import json

import common
from common import ItCase, NodeAgent, get_job, job_spec, node_req, ok, submit, submit_req

_state = {}


def setUpModule():
    c = common.setup_module(__name__, ["--allow_unverified=true", "--cycle_interval_ms=200"])
    # one 1-GPU node, kept alive, so that ExplainJob has a fleet to count;
    # only the tests that need it fail if NodeService cannot do this
    try:
        _, otok = c.new_operator()
        agent = NodeAgent.register(c, otok, node_req("jobs-node-1", gpus=1))
        agent.start_heartbeats(0.5)
        _state["agent"] = agent
    except AssertionError as e:
        _state["node_error"] = e


def tearDownModule():
    if "agent" in _state:
        _state["agent"].stop_heartbeats()
    common.teardown_module(__name__)


def spec2(**over):
    """A job that never fits the module's 1-GPU node."""
    return job_spec(gpus=2, **over)


# outbox rows naming a job above an id (a submit batch's row names several)
OUTBOX_AFTER = ("EXISTS (SELECT 1 FROM unnest(coalesce(job_ids, ARRAY[job_id])) j"
                " WHERE j > %s)")


class JobTest(ItCase):
    @classmethod
    def setUpClass(cls):
        c = common._clusters[__name__]
        cls.ta, cls.a = c.new_tenant()
        cls.tb, cls.b = c.new_tenant()

    def jcall(self, method, body, token=None):
        return self.c.call("JobService", method, body, token=token or self.a)

    def jobs_of(self, tenant):
        return self.c.count("jobs", "tenant_id = %s" % tenant["id"])

    def test_submit_and_idempotent_retry(self):
        key = self.c.unique("train")
        req = submit_req(key, spec2(priorityClass="PRIORITY_CLASS_HIGH"), name="llama-ft")
        first = self.assertOk(self.jcall("SubmitJob", req))
        self.assertIs(first.get("created"), True, first)
        job = first["job"]
        self.assertGreater(int(job["id"]), 0)
        self.assertEqual(job.get("tenantId"), self.ta["id"])
        self.assertEqual(job.get("state"), "JOB_STATE_QUEUED")
        self.assertEqual(job.get("name"), "llama-ft")
        self.assertEqual(job.get("idempotencyKey"), key)
        self.assertEqual(job["spec"].get("gpusPerNode"), 2)
        self.assertEqual(job["spec"].get("priorityClass"), "PRIORITY_CLASS_HIGH")
        self.assertGreater(int(job.get("submittedAtUs", "0")), 0)
        again = self.assertOk(self.jcall("SubmitJob", req))
        self.assertFalse(again.get("created", False), again)
        self.assertEqual(again["job"]["id"], job["id"])
        self.assertEqual(self.c.count("jobs", "idempotency_key = '%s'" % key), 1)
        # binary retry finds it too
        binr = self.assertOk(self.c.call("JobService", "SubmitJob", req, token=self.a,
                                         binary=True))
        self.assertEqual(binr["job"]["id"], job["id"])
        self.assertFalse(binr.get("created", False))

    def test_same_key_for_two_tenants_is_two_jobs(self):
        key = self.c.unique("shared-key")
        ja = submit(self.c, self.a, key, spec2())
        jb = submit(self.c, self.b, key, spec2())
        self.assertNotEqual(ja["id"], jb["id"])

    def test_same_key_other_spec_is_failed_precondition(self):
        key = self.c.unique("k")
        submit(self.c, self.a, key, spec2())
        before = self.jobs_of(self.ta)
        r = self.jcall("SubmitJob", submit_req(key, spec2(gpusPerNode=4)))
        self.assertError(r, "failed_precondition")
        self.assertUnchanged("jobs", before, "tenant_id = %s" % self.ta["id"])

    def test_bad_specs_are_invalid_argument_naming_the_field(self):
        k = self.c.unique
        cases = [
            (submit_req(k("b"), spec2(gpusPerNode=0)), "gpus_per_node"),
            (submit_req(k("b"), spec2(gpusPerNode=65)), "gpus_per_node"),
            (submit_req(k("b"), spec2(maxDurationUs="0")), "max_duration_us"),
            (submit_req(k("b"), spec2(maxDurationUs="-5")), "max_duration_us"),
            (submit_req(k("b"), spec2(nodeCount=65)), "node_count"),
            (submit_req(k("b"), spec2(gpusPerNoed=1)), "gpusPerNoed"),
            (submit_req(k("b"), spec2(kind="JOB_KIND_NOPE")), "kind"),
            (submit_req(k("b"), spec2(gpusPerNode="two")), "gpus_per_node"),
            (dict(submit_req(k("b"), spec2()), extraField=1), "extraField"),
            ({"idempotencyKey": k("b"), "name": "x"}, "spec"),
            ({"name": "x", "spec": spec2()}, "idempotency_key"),
            (submit_req("a" * 129, spec2(), name="x"), "idempotency_key"),
            (submit_req("bad\x01key", spec2(), name="x"), "idempotency_key"),
            (submit_req("", spec2(), name="x"), "idempotency_key"),
            (submit_req(k("b"), spec2(), name="n" * 129), "name"),
        ]
        for req, field in cases:
            with self.subTest(case=json.dumps(req)[:120]):
                top = self.c.psql_value("SELECT coalesce(max(id), 0) FROM jobs")
                r = self.jcall("SubmitJob", req)
                self.assertError(r, "invalid_argument", field=field, msg=json.dumps(req)[:200])
                self.assertEqual(self.c.count("jobs", "id > %s" % top), 0, "job row written")
                self.assertEqual(self.c.count("outbox", OUTBOX_AFTER % top), 0,
                                 "outbox row written")

    def test_binary_name_that_is_not_utf8_is_invalid_argument(self):
        # proto3 strings are UTF-8; a binary body can carry anything. The
        # bad submit fails alone, naming the field, and writes nothing.
        import cluster
        top = self.c.psql_value("SELECT coalesce(max(id), 0) FROM jobs")
        good = cluster.to_binary("JobService", "SubmitJob",
                                 submit_req(self.c.unique("utf8"), spec2()))
        r = self.c.call("JobService", "SubmitJob", token=self.a, binary=True,
                        raw_body=good + b"\x12\x03n\xff\xfe")
        self.assertError(r, "invalid_argument", field="name")
        self.assertEqual(self.c.count("jobs", "id > %s" % top), 0, "job row written")
        self.assertEqual(self.c.count("outbox", OUTBOX_AFTER % top), 0, "outbox row written")
        self.assertOk(self.c.call("JobService", "SubmitJob", token=self.a, binary=True,
                                  raw_body=good))

    def test_get_job(self):
        j = submit(self.c, self.a, spec=spec2())
        got = get_job(self.c, self.a, j["id"])
        self.assertEqual(got["id"], j["id"])
        self.assertEqual(got["state"], "JOB_STATE_QUEUED")
        self.assertEqual(got["spec"]["gpusPerNode"], 2)
        self.assertEqual(got["spec"].get("command"), ["sleep", "1"])

    def test_get_unknown_job_is_not_found(self):
        self.assertError(self.jcall("GetJob", {"jobId": "987654321"}), "not_found")

    def test_get_job_zero_id(self):
        self.assertError(self.jcall("GetJob", {}), ("invalid_argument", "not_found"))

    def test_other_tenant_cannot_see_or_touch_a_job(self):
        j = submit(self.c, self.a, spec=spec2())
        unknown = self.jcall("GetJob", {"jobId": "987654321"}, token=self.b)
        for method in ("GetJob", "CancelJob", "ExplainJob"):
            r = self.jcall(method, {"jobId": j["id"]}, token=self.b)
            self.assertError(r, "not_found", msg=method)
            # same answer as for an id that does not exist: nothing leaks
            self.assertEqual(r.status, unknown.status)
        self.assertEqual(get_job(self.c, self.a, j["id"])["state"], "JOB_STATE_QUEUED")
        listed = self.assertOk(self.jcall("ListJobs", {"pageSize": 1000}, token=self.b))
        self.assertNotIn(j["id"], [x["id"] for x in listed.get("jobs", [])])

    def test_tenant_cannot_list_other_tenant_by_id(self):
        j = submit(self.c, self.a, spec=spec2())
        r = self.jcall("ListJobs", {"tenantId": self.ta["id"], "pageSize": 1000}, token=self.b)
        if r.status == 200:
            self.assertNotIn(j["id"], [x["id"] for x in r.body.get("jobs", [])])
        else:
            self.assertError(r, ("permission_denied", "invalid_argument"))

    def test_admin_sees_any_job(self):
        j = submit(self.c, self.a, spec=spec2())
        got = get_job(self.c, self.c.admin_token, j["id"])
        self.assertEqual(got["tenantId"], self.ta["id"])
        b = self.assertOk(self.c.call("JobService", "ListJobs",
                                      {"tenantId": self.ta["id"], "pageSize": 1000},
                                      token=self.c.admin_token))
        self.assertIn(j["id"], [x["id"] for x in b.get("jobs", [])])
        self.assertTrue(all(x["tenantId"] == self.ta["id"] for x in b["jobs"]))

    def test_list_jobs_pages_newest_first(self):
        _, tok = self.c.new_tenant()
        made = [submit(self.c, tok, spec=spec2())["id"] for _ in range(5)]
        seen, tokn, pages = [], "", 0
        while True:
            body = {"pageSize": 2}
            if tokn:
                body["pageToken"] = tokn
            b = self.assertOk(self.jcall("ListJobs", body, token=tok))
            self.assertLessEqual(len(b.get("jobs", [])), 2)
            seen += [x["id"] for x in b.get("jobs", [])]
            pages += 1
            tokn = b.get("nextPageToken", "")
            if not tokn or pages > 10:
                break
        self.assertEqual(seen, sorted(made, key=int, reverse=True))
        self.assertEqual(pages, 3)

    def test_list_jobs_state_filter(self):
        _, tok = self.c.new_tenant()
        ids = [submit(self.c, tok, spec=spec2())["id"] for _ in range(4)]
        for jid in ids[:2]:
            self.assertOk(self.jcall("CancelJob", {"jobId": jid}, token=tok))
        b = self.assertOk(self.jcall("ListJobs", {"states": ["JOB_STATE_CANCELLED"]}, token=tok))
        self.assertEqual(sorted(x["id"] for x in b.get("jobs", [])), sorted(ids[:2]))
        b = self.assertOk(self.jcall("ListJobs", {"states": ["JOB_STATE_QUEUED"]}, token=tok))
        self.assertEqual(sorted(x["id"] for x in b.get("jobs", [])), sorted(ids[2:]))
        b = self.assertOk(self.jcall("ListJobs", {"states": ["JOB_STATE_QUEUED",
                                                             "JOB_STATE_CANCELLED"]}, token=tok))
        self.assertEqual(len(b.get("jobs", [])), 4)

    def test_list_jobs_bad_input(self):
        self.assertError(self.jcall("ListJobs", {"pageToken": "garbage!"}), "invalid_argument",
                         field="page_token")
        self.assertError(self.jcall("ListJobs", {"states": ["JOB_STATE_NOPE"]}),
                         "invalid_argument", field="states")

    def test_cancel_queued_job(self):
        j = submit(self.c, self.a, spec=spec2())
        b = self.assertOk(self.jcall("CancelJob", {"jobId": j["id"], "reason": "changed mind"}))
        self.assertEqual(b["job"]["state"], "JOB_STATE_CANCELLED")
        self.assertGreater(int(b["job"].get("endedAtUs", "0")), 0)
        self.assertEqual(get_job(self.c, self.a, j["id"])["state"], "JOB_STATE_CANCELLED")
        self.assertEqual(self.c.psql_value("SELECT state FROM jobs WHERE id = %s" % j["id"]), "6")
        # cancelling a terminal job is a no-op that returns it
        again = self.assertOk(self.jcall("CancelJob", {"jobId": j["id"]}))
        self.assertEqual(again["job"]["state"], "JOB_STATE_CANCELLED")
        self.assertEqual(again["job"].get("endedAtUs"), b["job"].get("endedAtUs"))
        # and it leaves the hot queue
        common.wait_for(lambda: self.c.redis_cli("ZSCORE", "{gm}:pending", j["id"]) == "",
                        timeout=10, what="job %s out of the Redis pending set" % j["id"])

    def test_submitted_job_reaches_the_redis_queue(self):
        j = submit(self.c, self.a, spec=spec2())
        common.wait_for(lambda: self.c.redis_cli("ZSCORE", "{gm}:pending", j["id"]) != "",
                        timeout=10, what="job %s in {gm}:pending" % j["id"])

    def need_node(self):
        if "node_error" in _state:
            self.fail("the module's node could not be set up: %s" % _state["node_error"])

    def test_explain_queued_job_counts_nodes(self):
        self.need_node()
        j = submit(self.c, self.a, spec=spec2())

        def explained():
            r = self.jcall("ExplainJob", {"jobId": j["id"]})
            if r.code == "unavailable":  # no scheduler leader yet: retry
                return None
            b = self.assertOk(r)
            e = b.get("explanation") or {}
            return b if int(e.get("totalNodes", 0)) >= 1 and e.get("counts") else None
        b = common.wait_for(explained, timeout=15, what="an explanation counting the node")
        self.assertEqual(b.get("jobId"), j["id"])
        self.assertEqual(b.get("state"), "JOB_STATE_QUEUED")
        e = b["explanation"]
        self.assertEqual(e.get("fitNodes", 0), 0, e)
        reasons = {x.get("reason"): x.get("nodeCount") for x in e["counts"]}
        self.assertEqual(reasons.get("EXPLAIN_REASON_GPU_COUNT"), 1, e)
        self.assertTrue(e.get("summary"), e)

    def test_explain_memory_reason(self):
        self.need_node()
        j = submit(self.c, self.a, spec=job_spec(gpus=1, minGpuMemoryMib=81920))

        def explained():
            r = self.jcall("ExplainJob", {"jobId": j["id"]})
            if r.code == "unavailable":  # no scheduler leader yet: retry
                return None
            e = self.assertOk(r).get("explanation") or {}
            return e if e.get("counts") else None
        e = common.wait_for(explained, timeout=15, what="an explanation")
        reasons = {x.get("reason"): x.get("nodeCount") for x in e["counts"]}
        self.assertEqual(reasons.get("EXPLAIN_REASON_MEMORY"), 1, e)

    def test_explain_cancelled_job_has_no_explanation(self):
        j = submit(self.c, self.a, spec=spec2())
        self.assertOk(self.jcall("CancelJob", {"jobId": j["id"]}))
        r = common.wait_for(lambda: (lambda r: r if r.code != "unavailable" else None)(
            self.jcall("ExplainJob", {"jobId": j["id"]})), timeout=15, what="a scheduler")
        b = self.assertOk(r)
        self.assertEqual(b.get("state"), "JOB_STATE_CANCELLED")
        self.assertFalse(b.get("explanation"), b)

    def test_get_job_carries_explanation_while_queued(self):
        j = submit(self.c, self.a, spec=spec2())
        common.wait_for(lambda: get_job(self.c, self.a, j["id"]).get("explanation"),
                        timeout=15, what="Job.explanation set while QUEUED")


class JobConcurrencyTest(ItCase):
    def test_parallel_submits_with_one_key_make_one_job(self):
        import threading
        _, tok = self.c.new_tenant()
        key = self.c.unique("race")
        out = []

        def go():
            out.append(self.c.call("JobService", "SubmitJob", submit_req(key, spec2()), token=tok))
        ts = [threading.Thread(target=go) for _ in range(8)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        ids = {ok(r)["job"]["id"] for r in out}
        self.assertEqual(len(ids), 1, [str(r) for r in out])
        self.assertEqual(sum(1 for r in out if r.body.get("created")), 1,
                         "exactly one call created it")
        self.assertEqual(self.c.count("jobs", "idempotency_key = '%s'" % key), 1)

    def test_parallel_submits_one_key_two_specs(self):
        # Many submits of one key race, half with another spec; several
        # land in one group-commit batch. One creates the job; the rest with
        # its spec get it back, the others failed_precondition.
        import threading
        _, tok = self.c.new_tenant()
        for rnd in range(3):
            key = self.c.unique("race2")
            specs = [spec2(), spec2(gpusPerNode=3)]
            out = []
            lock = threading.Lock()
            start = threading.Event()

            def go(which):
                start.wait()
                r = self.c.call("JobService", "SubmitJob", submit_req(key, specs[which]),
                                token=tok)
                with lock:
                    out.append((which, r))
            ts = [threading.Thread(target=go, args=(i % 2,)) for i in range(24)]
            for t in ts:
                t.start()
            start.set()
            for t in ts:
                t.join()
            created = [(w, r) for w, r in out if r.status == 200 and r.body.get("created")]
            self.assertEqual(len(created), 1, [str(r) for _, r in out])
            winner, first = created[0]
            job_id = first.body["job"]["id"]
            for w, r in out:
                if w == winner:
                    self.assertEqual(ok(r)["job"]["id"], job_id, str(r))
                else:
                    self.assertError(r, "failed_precondition", field="idempotencyKey")
            self.assertEqual(self.c.count("jobs", "idempotency_key = '%s'" % key), 1)
        print("  key repeats answered within a batch: %s"
              % self.c.metric("gpumatch_submit_key_repeats_total"), end=" ", flush=True)


if __name__ == "__main__":
    import sys
    import run
    raise SystemExit(run.main(["-v", __name__] + sys.argv[1:]))
