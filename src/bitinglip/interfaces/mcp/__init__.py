"""The MCP server at `/mcp`: BitingLip's models, deployments, batches and usage as tools for agents, each tool a
client of the HTTP API with the caller's own key."""

from bitinglip.interfaces.mcp.plugin import MCP_PATH, McpPlugin

__all__ = ["MCP_PATH", "McpPlugin"]
