// Copies the dashboard's browser libraries, byte for byte, from node_modules (after `npm ci`) into the package
// data the gateway serves: services/gateway/ui/vendor/<package>/<path>. The files are listed once, in
// package.json "jetdagVendor"; tests/test_dashboard_assets.py checks the copies against node_modules.
import { copyFileSync, mkdirSync, readFileSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const manifest = JSON.parse(readFileSync(join(root, "package.json"), "utf8")).jetdagVendor;
const target = join(root, "services", "gateway", "ui", "vendor");
rmSync(target, { recursive: true, force: true });
for (const [pkg, files] of Object.entries(manifest)) {
  const version = JSON.parse(readFileSync(join(root, "node_modules", pkg, "package.json"), "utf8")).version;
  for (const file of files) {
    const to = join(target, pkg, file);
    mkdirSync(dirname(to), { recursive: true });
    copyFileSync(join(root, "node_modules", pkg, file), to);
  }
  console.log(`${pkg}@${version}: ${files.join(", ")}`);
}
