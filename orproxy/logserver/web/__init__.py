"""The logging server's HTTP face: the route table, the REST API, its query parameters,
statistics and OpenAPI document, the UI's static files and the JSON replies they share."""
