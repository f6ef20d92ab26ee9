// The official MCP TypeScript SDK's client against a vectorhive server (tests/test_mcp_interop.py).
// Usage: node client.mjs <MCP endpoint URL> <API key> <collection>; prints one JSON document.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const [url, key, collection] = process.argv.slice(2);
const transport = new StreamableHTTPClientTransport(new URL(url), {
  requestInit: { headers: { Authorization: `Bearer ${key}` } },
});
const client = new Client({ name: "vectorhive-interop", version: "1.0.0" });
await client.connect(transport);

const out = {
  protocolVersion: transport.protocolVersion ?? null,
  server: client.getServerVersion(),
  tools: (await client.listTools()).tools.map((t) => ({ name: t.name, annotations: t.annotations })),
};
// callTool checks structuredContent against each tool's outputSchema (listTools cached them).
out.upsert = await client.callTool({
  name: "upsert_vectors",
  arguments: {
    collection,
    vectors: [
      { id: "ts-1", vector: [1, 0, 0], metadata: { from: "typescript" } },
      { id: "ts-2", vector: [0, 1, 0] },
    ],
  },
});
out.search = await client.callTool({ name: "search", arguments: { collection, vector: [1, 0.1, 0], top_k: 1 } });
out.dryRun = await client.callTool({ name: "delete", arguments: { collection, ids: ["ts-2"], dry_run: true } });
out.listed = await client.callTool({ name: "list_collections", arguments: {} });
out.described = await client.callTool({ name: "describe_collection", arguments: { collection } });
out.missing = await client.callTool({ name: "describe_collection", arguments: { collection: "no-such" } });
await client.close();
console.log(JSON.stringify(out));
