// A real Connect client (@connectrpc/connect-node) against gpumatchd, with
// descriptors loaded at run time from protoc's FileDescriptorSet.
import { readFileSync } from "node:fs";
import { createClient, ConnectError } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { fromBinary, createFileRegistry } from "@bufbuild/protobuf";
import { FileDescriptorSetSchema } from "@bufbuild/protobuf/wkt";

const [url, adminToken] = process.argv.slice(2, 4);
const reg = createFileRegistry(fromBinary(FileDescriptorSetSchema, readFileSync(process.argv[4])));
const Admin = reg.getService("gpumatch.v1.AdminService");
const Jobs = reg.getService("gpumatch.v1.JobService");
for (const binary of [false, true]) {
  const transport = createConnectTransport({ baseUrl: url, httpVersion: "1.1", useBinaryFormat: binary });
  const admin = createClient(Admin, transport);
  const hdr = (t) => ({ headers: { Authorization: `Bearer ${t}` } });
  const name = `cc-${binary ? "bin" : "json"}-${Date.now()}`;
  const t = await admin.createTenant({ tenant: { name } }, hdr(adminToken));
  const tok = await admin.createToken({ role: 1, tenantId: t.tenant.id, name: "cc" }, hdr(adminToken));
  const jobs = createClient(Jobs, transport);
  const r = await jobs.submitJob({ idempotencyKey: "k1", spec: { gpusPerNode: 1, maxDurationUs: 60000000n } }, hdr(tok.secret));
  const g = await jobs.getJob({ jobId: r.job.id }, hdr(tok.secret));
  console.log(binary ? "binary" : "json  ", "tenant", t.tenant.id, "job", r.job.id, "created", r.created, "state", g.job.state);
  try {
    await jobs.submitJob({ idempotencyKey: "k2", spec: { gpusPerNode: 0, maxDurationUs: 1n } }, hdr(tok.secret));
  } catch (e) {
    const ce = ConnectError.from(e);
    console.log(binary ? "binary" : "json  ", "error code", ce.code, "message:", ce.rawMessage);
  }
  try { await jobs.getJob({ jobId: 1n }, hdr("gm_bogus")); } catch (e) { console.log("        unauth code", ConnectError.from(e).code); }
}
