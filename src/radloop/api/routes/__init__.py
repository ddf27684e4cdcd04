"""The API's routers, one module per resource; each parses, calls a service and formats."""
