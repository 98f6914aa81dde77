// Validates a Dockerfile with dockerfile-utils: unknown instructions and
// flags, bad arguments (ports, protocols, durations). check.sh runs it.
import fs from "node:fs";
import { validate } from "dockerfile-utils";

const problems = validate(fs.readFileSync(process.argv[2], "utf8"));
for (const p of problems) console.log(`${process.argv[2]}:${p.range.start.line + 1}: ${p.message}`);
if (problems.length === 0) console.log(`${process.argv[2]}: no problems`);
process.exit(problems.length ? 1 : 0);
