"""The MCP server: tenant-scoped tools for AI agents, on the official MCP SDK."""
