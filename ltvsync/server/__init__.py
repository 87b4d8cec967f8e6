"""The daemon's HTTP face: JSON API, Prometheus metrics, status page and alerting webhook."""
