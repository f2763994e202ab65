"""``brigade dashboard``: the Grafana dashboard of ``deploy/grafana`` drawn from a real run, without Grafana."""
