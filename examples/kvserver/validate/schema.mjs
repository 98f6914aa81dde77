// Validates each document of a Kubernetes manifest against the Kubernetes
// OpenAPI schema that kubernetes-models bundles: required fields, types,
// formats. check.sh runs it.
import fs from "node:fs";
import * as yaml from "js-yaml";
import { Service } from "kubernetes-models/v1/Service";
import { StatefulSet } from "kubernetes-models/apps/v1/StatefulSet";

const kinds = { "v1 Service": Service, "apps/v1 StatefulSet": StatefulSet };
let bad = 0;
for (const doc of yaml.loadAll(fs.readFileSync(process.argv[2], "utf8"))) {
  if (!doc) continue;
  const Kind = kinds[`${doc.apiVersion} ${doc.kind}`];
  if (!Kind) {
    console.log(`${doc.apiVersion} ${doc.kind}: not known to this check`);
    bad++;
    continue;
  }
  try {
    new Kind(doc).validate();
    console.log(`${doc.kind} ${doc.metadata.name}: valid against the schema`);
  } catch (e) {
    console.log(`${doc.kind} ${doc.metadata?.name}: ${e.message}`);
    bad++;
  }
}
process.exit(bad ? 1 : 0);
