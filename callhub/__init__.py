"""callhub: exact call records, ring counts, rota routing and callback worklists for Asterisk."""

__version__ = "0.1.0"
