"""HTTP routes, one module per resource: parse the request, call a service, serialise the answer."""
