"""The live web dashboard (``carnival dashboard``): panel SQL in ``panels``, the HTTP server in ``server``,
the page in ``static/``, the Grafana dashboard generated from the same SQL in ``grafana``."""
