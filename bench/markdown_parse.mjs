// How long the page's streaming render spends parsing a long answer: markdown-it
// (the vendored file the page uses) on N KB of mixed Markdown, per render.
// Run: node bench/markdown_parse.mjs   (docs/benchmarks.md, "The page's render")
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

const file = fileURLToPath(
  new URL("../conversations/static/conversations/vendor/markdown-it.min.js", import.meta.url),
);
const module = { exports: {} };
new Function("module", "exports", readFileSync(file, "utf8"))(module, module.exports);
const md = module.exports("commonmark", { html: false, linkify: false }).enable("table");

const chunk =
  "## Heading\n\nSome **bold** text and `code` with a [link](https://e.com).\n\n" +
  "- item one\n- item two\n\n```python\ndef f(x):\n    return x * 2\n```\n\n" +
  "| a | b |\n| --- | --- |\n| 1 | 2 |\n\n";
for (const kb of [5, 20, 50, 100]) {
  let text = "";
  while (text.length < kb * 1024) text += chunk;
  for (let i = 0; i < 20; i += 1) md.parse(text, {}); // warm up
  const runs = 100;
  const start = process.hrtime.bigint();
  for (let i = 0; i < runs; i += 1) md.parse(text, {});
  const ms = Number(process.hrtime.bigint() - start) / 1e6 / runs;
  console.log(`${String(kb).padStart(3)} KB: ${ms.toFixed(2)} ms per parse`);
}
